#!/usr/bin/env python3
"""Checks confab's chat-room semantics of the seed's ChatService with grpcio (a client stack
nobody here wrote): BroadcastMessages replays the room between the welcome and finished lines
and ends OK; ChatStream is a live room whose own messages come back in order (ping-pong), and
it ends OK after half-close. Prints one PASS/FAIL line per check and an 'N passed, M failed'
summary; exit 0 only if all pass.

Run after the peer's own client, which leaves in room `lobby`: SayHello {Alice, "Hi there"}
and an upload of Alice/Bob/Carol "part 1..3" (plus its own failed ChatStream ping)."""
import os
import queue
import sys

import grpc
import chat_pb2
import chat_pb2_grpc

ADDR = os.environ.get("PEER_ADDR", "127.0.0.1:50051")
TIMEOUT = float(os.environ.get("PEER_TIMEOUT_S", "10"))
Message = chat_pb2.Message


class CheckError(Exception):
    pass


def pair(m):
    return (m.user, m.content)


def check_broadcast(stub):
    got = [pair(m) for m in stub.BroadcastMessages(Message(user="Dora", content="replay"),
                                                   timeout=TIMEOUT, metadata=[("room", "lobby")])]
    if got[:1] != [("Server", "Welcome to the broadcast!")] or got[-1:] != [("Server", "Broadcast finished.")]:
        raise CheckError(f"welcome/finished lines missing: {got}")
    replay = got[1:-1]
    wanted = [("Alice", "Hi there"), ("Alice", "part 1"), ("Bob", "part 2"), ("Carol", "part 3")]
    positions = [replay.index(w) if w in replay else -1 for w in wanted]
    if -1 in positions or positions != sorted(positions):
        raise CheckError(f"replay lacks the earlier messages in order: {replay}")
    return f"{len(replay)} room messages replayed in order, clean end of stream"


_END = object()


def check_chat(stub):
    contents = ["one", "two", "héllo wörld ✓"]
    q = queue.Queue()

    def requests():
        while True:
            item = q.get()
            if item is _END:
                return
            yield item

    responses = stub.ChatStream(requests(), timeout=TIMEOUT, metadata=[("room", "interop-chat")])
    try:
        for c in contents:
            q.put(Message(user="Erin", content=c))
            m = next(responses)
            if pair(m) != ("Erin", c):
                raise CheckError(f"expected own message {c!r} back, got {pair(m)}")
        q.put(_END)
        extra = [pair(m) for m in responses]
        if extra:
            raise CheckError(f"unexpected messages after half-close: {extra}")
    finally:
        q.put(_END)
    return f"{len(contents)} own messages back live (ping-pong), clean end of stream"


def main():
    channel = grpc.insecure_channel(ADDR)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    passed = failed = 0
    for name, check in [("BroadcastMessages", check_broadcast), ("ChatStream", check_chat)]:
        try:
            print(f"PASS {name:<18} {check(stub)}")
            passed += 1
        except (grpc.RpcError, CheckError, StopIteration) as e:
            print(f"FAIL {name:<18} {e!r}")
            failed += 1
    channel.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
