import Foundation

/// A fixture whose nodes can be probed by name: `HypervisorTopology` (one hypervisor) and
/// `CloudTopology` (several, across a fabric). Each provides the batch; the rest comes with it.
public protocol ProbeRunning: AnyObject {
    /// Runs probes concurrently (all at once, one poll loop): the batch takes about as long as
    /// its slowest probe, i.e. ≈ the timeout if any is denied. Results are in input order.
    /// Throws only for a broken set-up (unknown node, address owned by no node, a listener that
    /// cannot bind), never because a probe was denied.
    func probe(_ probes: [Probe]) throws -> [ProbeResult]

    /// The node called `name`, or nil.
    func node(_ name: String) -> TopologyNode?
}

extension ProbeRunner {
    /// Resolves each probe's source node by name and its destination by address owner (where
    /// its listener goes), then runs them all.
    static func run(_ probes: [Probe], node: (String) -> TopologyNode?, owner: (String) -> TopologyNode?,
                    server: EchoServer) throws -> [ProbeResult] {
        let resolved = try probes.map { p -> ResolvedProbe in
            guard let from = node(p.from) else { throw HarnessError("probe \(p): no node \(p.from)") }
            var destination: String?
            if p.kind != .icmp {
                guard let owner = owner(p.to) else {
                    throw HarnessError("probe \(p): no node owns \(p.to), so there is nowhere to listen")
                }
                destination = owner.namespace.name
            }
            return ResolvedProbe(probe: p, sourceNamespace: from.namespace.name, destinationNamespace: destination)
        }
        return try run(resolved, server: server)
    }
}

extension HypervisorTopology {
    public func probe(_ probes: [Probe]) throws -> [ProbeResult] {
        try ProbeRunner.run(probes, node: { self.nodesByName[$0] }, owner: owner(of:), server: server)
    }
}

extension ProbeRunning {
    /// The node called `name`; traps on an unknown name.
    public subscript(_ name: String) -> TopologyNode {
        guard let node = node(name) else { preconditionFailure("no node \(name) in \(Self.self)") }
        return node
    }

    /// Runs one probe.
    public func probe(_ probe: Probe) throws -> ProbeResult {
        try self.probe([probe])[0]
    }

    /// TCP connect + echo from node `from` to `to`:`port`; true iff it got through.
    public func tcp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.tcp(from: from, to: to, port: port, source: source, timeout: timeout)).passed
    }

    /// One UDP datagram from node `from` to `to`:`port`; true iff the listener received it.
    public func udp(from: String, to: String, port: UInt16, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.udp(from: from, to: to, port: port, source: source, timeout: timeout)).passed
    }

    /// One ICMP echo from node `from` to `to`; true iff the reply came.
    public func ping(from: String, to: String, source: String? = nil, timeout: Double = 1) throws -> Bool {
        try probe(.icmp(from: from, to: to, source: source, timeout: timeout)).passed
    }

    /// The readiness probes from `node` to `target`'s first address of each family both have:
    /// one UDP datagram to `HypervisorTopology.readinessPort`, short timeout.
    func readinessProbes(from node: TopologyNode, to target: TopologyNode) -> [Probe] {
        [target.ipv4, target.ipv6].compactMap { $0 }
            .filter { (isIPv6($0) ? node.ipv6 : node.ipv4) != nil }
            .map { .udp(from: node.name, to: $0, port: HypervisorTopology.readinessPort, timeout: 0.2) }
    }

    /// Probes until every probe has been answered (retrying those that were not every ~0.25 s)
    /// and returns the rounds needed beyond the first; throws after `limit` seconds, with
    /// `diagnostics()` in the message.
    func retryUntilAnswered(_ probes: [Probe], what: String, within limit: Double = 10,
                            diagnostics: () -> String) throws -> Int {
        var pending = probes
        let start = Date()
        var round = 0
        while !pending.isEmpty {
            if round > 0 {
                guard Date().timeIntervalSince(start) < limit else {
                    throw HarnessError("\(what) not ready after \(limit) s: \(pending)\n\(diagnostics())")
                }
                usleep(50_000)
            }
            pending = try probe(pending).filter { !$0.answered }.map(\.probe)
            round += 1
        }
        return max(0, round - 1)
    }
}

extension HypervisorTopology {
    /// Opens one TCP connection from node `from` to `to`:`port` (an echo listener is started
    /// there) and keeps it; throws if it cannot be established within `timeout`.
    public func openTCPSession(from: String, to: String, port: UInt16, source: String? = nil,
                               timeout: Double = 1) throws -> TCPSession {
        guard let node = nodesByName[from] else { throw HarnessError("TCP session: no node \(from)") }
        guard let owner = owner(of: to) else { throw HarnessError("TCP session: no node owns \(to)") }
        let session = try TCPSession(from: from, sourceNamespace: node.namespace.name, to: canonicalAddress(to) ?? to,
                                     destinationNamespace: owner.namespace.name, port: port, source: source,
                                     timeout: timeout, server: server)
        lock.lock()
        sessions.removeAll { $0.session == nil }
        sessions.append(WeakSession(session: session))
        lock.unlock()
        return session
    }
}
