import Foundation

/// Probes between namespaces the harness did not make, such as the instances rampart-api's
/// netns compute driver creates: a probe's `from` is the source namespace's name, and each
/// destination address is listened on in the namespace `owners` gives for it. Same listeners,
/// probes and sessions as the topologies'.
public final class NamespaceProber: @unchecked Sendable {
    let server: EchoServer

    public init() throws { server = try EchoServer() }

    deinit { stop() }

    /// Runs the probes at once (results in order); `owners`: destination address → namespace.
    public func probe(_ probes: [Probe], owners: [String: String]) throws -> [ProbeResult] {
        let resolved = try probes.map { p -> ResolvedProbe in
            var destination: String?
            if p.kind != .icmp {
                guard let owner = owners[p.to] else { throw HarnessError("probe \(p): no namespace owns \(p.to)") }
                destination = owner
            }
            return ResolvedProbe(probe: p, sourceNamespace: p.from, destinationNamespace: destination)
        }
        return try ProbeRunner.run(resolved, server: server)
    }

    /// Opens one TCP connection from namespace `from` to `to`:`port`, listened on in namespace
    /// `owner`, and keeps it (throws if it cannot be established within `timeout`).
    public func openTCPSession(from: String, to: String, owner: String, port: UInt16, timeout: Double = 1) throws -> TCPSession {
        try TCPSession(from: from, sourceNamespace: from, to: to, destinationNamespace: owner, port: port,
                       source: nil, timeout: timeout, server: server)
    }

    /// Closes every listener (idempotent).
    public func stop() { server.stop() }
}
