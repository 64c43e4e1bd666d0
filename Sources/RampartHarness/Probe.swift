import Foundation

// Probes: real packets from one namespace to an address, deciding "passed" or "denied".
//
// Everything here runs inside the test process, without starting `nc` or `socat`: sockets are
// created with the calling thread briefly inside the wanted namespace (a socket keeps the
// namespace it was made in), so a probe costs microseconds when it passes and exactly its
// timeout when it is dropped. Only ICMP starts a process (`ping`, spawned inside the source
// namespace). Listeners are bound to the destination address and port and kept for the life of
// their topology, so ports are never rebound between probes (no TIME_WAIT or reuse flakiness),
// and a probe never fails because "no one was listening".

/// One probe: from a node of a topology to an address.
public struct Probe: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable, CustomStringConvertible {
        /// TCP connect, then one line sent and echoed back.
        case tcp(port: UInt16)
        /// One datagram to a UDP echo listener (which answers with the same datagram).
        case udp(port: UInt16)
        /// One ICMP / ICMPv6 echo request (`ping -c 1`).
        case icmp

        public var description: String {
            switch self {
            case .tcp(let p): "tcp/\(p)"
            case .udp(let p): "udp/\(p)"
            case .icmp: "icmp"
            }
        }
    }

    public var kind: Kind
    /// The name of the node the probe starts from (an instance, an outside host, or `"hv"`).
    public var from: String
    /// The destination address (IPv4 or IPv6, no prefix length).
    public var to: String
    /// The source address to send from; nil lets the kernel choose (the node's first address of
    /// that family). For TCP and UDP it need not be assigned to the node (the socket is bound
    /// with IP_FREEBIND + IP_TRANSPARENT, so the packet leaves with that source even though
    /// no reply can come back); for ICMP it must be assigned (see `TopologyNode.addAddress`).
    public var source: String?
    /// Seconds to wait for the answer; a denied probe costs this much.
    public var timeout: Double

    public init(_ kind: Kind, from: String, to: String, source: String? = nil, timeout: Double = 1) {
        self.kind = kind
        self.from = from
        self.to = to
        self.source = source
        self.timeout = timeout
    }

    public static func tcp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.tcp(port: port), from: from, to: to, source: source, timeout: timeout)
    }

    public static func udp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.udp(port: port), from: from, to: to, source: source, timeout: timeout)
    }

    public static func icmp(from: String, to: String, source: String? = nil, timeout: Double = 1) -> Probe {
        Probe(.icmp, from: from, to: to, source: source, timeout: timeout)
    }

    public var description: String {
        "\(kind) \(from) → \(to)" + (source.map { " (from \($0))" } ?? "")
    }
}

/// What a probe saw.
public struct ProbeResult: Sendable, CustomStringConvertible {
    public var probe: Probe
    /// The verdict tests assert on. TCP: the connection was established and a line came back.
    /// UDP: the listener received the datagram (one-way; see `answered`). ICMP: a reply came.
    public var passed: Bool
    /// The destination received it (for ICMP: same as `answered`).
    public var delivered: Bool
    /// A reply came back to the source (TCP echo, UDP echo, ICMP echo reply): proves the
    /// return direction too, i.e. stateful return traffic.
    public var answered: Bool
    /// The source address as the listener saw it (TCP and UDP, when delivered).
    public var seenSource: String?
    /// Why it ended: "echoed", "timeout", "connection refused", "ping exit 1", ...
    public var detail: String
    /// Seconds from start to verdict.
    public var elapsed: Double

    public var description: String {
        "\(probe): \(passed ? "passed" : "DENIED") (\(detail)"
            + (seenSource.map { ", seen from \($0)" } ?? "") + String(format: ", %.3fs)", elapsed)
    }
}
