//! `gofer-probe HOST:PORT...`: tries a TCP connection to each address (3 s each) and prints
//! `HOST:PORT open` or `HOST:PORT closed` on a line of its own. The end-to-end tests run it in a container
//! (an image `FROM scratch` holding only it) to see what a container can reach; it sends nothing.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn main() {
    for target in std::env::args().skip(1) {
        let open = target
            .parse::<SocketAddr>()
            .is_ok_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
        println!("{target} {}", if open { "open" } else { "closed" });
    }
}
