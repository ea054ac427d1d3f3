//! `toy-server --classroom`: what the one flag works out about this
//! machine (the networks it may relay for) and what it tells the teacher
//! when a port cannot be had.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;

/// The networks of `interfaces` (each an address and its netmask) as
/// CIDRs, loopback always among them, sorted, IPv4 first, without repeats.
/// A netmask that is no prefix (never seen on a real interface) counts as
/// the address alone.
pub fn subnets(interfaces: &[(IpAddr, IpAddr)]) -> Vec<IpNet> {
    let loopback = [
        IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ];
    let mut nets: Vec<IpNet> = loopback.into_iter().flatten().collect();
    for &(ip, netmask) in interfaces {
        let net = IpNet::with_netmask(ip, netmask)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip));
        nets.push(net);
    }
    nets.sort_by_key(|n| (n.addr().is_ipv6(), *n));
    nets.dedup();
    // A network inside another one listed adds nothing (127.0.0.1/8 on lo).
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|m| m != n && m.contains(n)));
    nets
}

/// The networks of this machine's interfaces (see [`subnets`]).
pub fn machine_subnets() -> Vec<IpNet> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(found) => found,
        Err(e) => {
            eprintln!("toy-server: cannot list the network interfaces: {e}");
            Vec::new()
        }
    };
    let pairs: Vec<(IpAddr, IpAddr)> = interfaces
        .iter()
        .map(|i| match &i.addr {
            if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), IpAddr::V4(a.netmask)),
            if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), IpAddr::V6(a.netmask)),
        })
        .collect();
    subnets(&pairs)
}

/// What to do when a port below 1024 is refused: give the binary at `exe`
/// (its real path, links resolved) the capability, or take ports above
/// 1024 with `flags`.
pub fn low_port_fix(exe: &Path, flags: &str) -> String {
    format!(
        "Ports below 1024 need root or the capability CAP_NET_BIND_SERVICE. Either give it to \
         this program once (again after each rebuild; run the binary itself then, not cargo run):\n\
         \n    sudo setcap cap_net_bind_service=+ep {}\n\
         \nor use ports above 1024:\n\
         \n    {flags}\n",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn shown(nets: &[IpNet]) -> Vec<String> {
        nets.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn each_interface_gives_its_network() {
        let nets = subnets(&[
            (ip("127.0.0.1"), ip("255.0.0.0")),
            (ip("192.168.1.23"), ip("255.255.255.0")),
            (ip("10.4.7.9"), ip("255.255.240.0")),
            (ip("192.168.1.99"), ip("255.255.255.0")),
            (ip("::1"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            (ip("2001:db8:0:5::17"), ip("ffff:ffff:ffff:ffff::")),
            (ip("fe80::1c2:3ff:fe4:5"), ip("ffff:ffff:ffff:ffff::")),
        ]);
        assert_eq!(
            shown(&nets),
            [
                "10.4.0.0/20",
                "127.0.0.0/8",
                "192.168.1.0/24",
                "::1/128",
                "2001:db8:0:5::/64",
                "fe80::/64"
            ]
        );
    }

    #[test]
    fn loopback_is_always_there_and_odd_masks_mean_the_host() {
        assert_eq!(shown(&subnets(&[])), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(
            shown(&subnets(&[(ip("172.16.5.4"), ip("255.0.255.0"))])),
            ["127.0.0.0/8", "172.16.5.4/32", "::1/128"]
        );
        // A host route inside a listed network adds nothing.
        assert_eq!(
            shown(&subnets(&[
                (ip("10.0.0.5"), ip("255.255.255.255")),
                (ip("10.0.0.6"), ip("255.255.255.0"))
            ])),
            ["10.0.0.0/24", "127.0.0.0/8", "::1/128"]
        );
    }

    #[test]
    fn the_fix_names_the_binary_and_the_ports() {
        let fix = low_port_fix(
            Path::new("/home/t/postamt/target/release/examples/toy-server"),
            "toy-server --classroom --smtp-port 2525 --pop3-port 1100",
        );
        assert!(fix.contains(
            "\n    sudo setcap cap_net_bind_service=+ep /home/t/postamt/target/release/examples/toy-server\n"
        ));
        assert!(fix.contains("\n    toy-server --classroom --smtp-port 2525 --pop3-port 1100\n"));
    }
}
