//! The `confab` command line (filled in by the gRPC issue).

fn main() {}
