import Foundation

extension HypervisorTopology {
    /// Runs probes concurrently (all at once, one poll loop): the batch takes about as long as
    /// its slowest probe, i.e. ≈ the timeout if any is denied. Results are in input order.
    /// Throws only for a broken set-up (unknown node, address owned by no node, a listener that
    /// cannot bind), never because a probe was denied.
    public func probe(_ probes: [Probe]) throws -> [ProbeResult] {
        let resolved = try probes.map { p -> ResolvedProbe in
            guard let from = nodesByName[p.from] else { throw HarnessError("probe \(p): no node \(p.from)") }
            var destination: String?
            if p.kind != .icmp {
                guard let owner = owner(of: p.to) else {
                    throw HarnessError("probe \(p): no node owns \(p.to), so there is nowhere to listen")
                }
                destination = owner.namespace.name
            }
            return ResolvedProbe(probe: p, sourceNamespace: from.namespace.name, destinationNamespace: destination)
        }
        return try ProbeRunner.run(resolved, server: server)
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
