//! Joins a room, says hello, prints what the room says until the hello came back, and closes:
//! `cargo run -p confab-client --example hello -- http://127.0.0.1:50051 lobby ann`
//! (server URL, room, user; the defaults are these). Against `confab serve`, kill the server
//! while it runs and start it again: the client reconnects and carries on.

use confab_client::{Client, ClientOptions, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let user = args.next().unwrap_or_else(|| "ann".into());

    let (client, mut events) = Client::connect(ClientOptions::new(server).with_user(user)).await?;
    client.join(room.clone(), None).await?;
    let hello = client.send(room, "hello").await?;
    // Closing waits for everything sent to be stored and to come back.
    client.close().await?;
    while let Some(event) = events.next().await {
        match event {
            Event::Joined { room, first_seq, .. } => println!("* joined #{room}, live from seq {first_seq}"),
            Event::Message(m) => println!("[{} #{}] {}: {}", m.seq, m.room, m.user, m.body),
            Event::Sent { client_msg_id, seq, .. } if client_msg_id == hello => println!("* stored as #{seq}"),
            Event::Lagged { missed_from, missed_to, .. } => println!("* missed {missed_from}..={missed_to}"),
            Event::Resumed { room, first_seq, recovered, .. } => {
                println!(
                    "* resumed #{room} from seq {first_seq} ({})",
                    if recovered { "exactly" } else { "with a gap" }
                )
            }
            Event::Disconnected { reason } => eprintln!("* connection lost: {reason}"),
            Event::Refused(refusal) => eprintln!("! {}", refusal.message),
            Event::Closed(result) => result?,
            _ => {}
        }
    }
    Ok(())
}
