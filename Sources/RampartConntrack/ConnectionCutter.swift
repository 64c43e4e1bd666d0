import RampartCore
import RampartNetlink
import RampartSystem

/// Deletes the conntrack entries the committed IR no longer allows (contract rule 8), after a
/// commit that narrowed access. Injected: `rampartd` and the kernel tests use `ConntrackCutter`;
/// tests against a fake kernel use none (there is no conntrack table to cut, and the test's own
/// namespace must never be touched).
public protocol ConnectionCutter: AnyObject {
    /// Cuts, among the entries `scope` names, those `ir` refuses, and every entry at a
    /// `departed` address. `local` describes `ir`'s local instances (nil: `ir` answers).
    func cut(ir: RulesetIR, scope: Revocation.Scope, departed: Set<IPAddress>, local: (any LocalInstances)?) throws -> Revocation.Report
}

/// The cut over ctnetlink in a network namespace; works for either backend (it evaluates the
/// IR, not the kernel's rules). The connection is opened on first use and again after a failure.
public final class ConntrackCutter: ConnectionCutter {
    public let namespace: NetworkNamespace
    /// Entries by address, kept from conntrack events (a long-running owner's): a fresh index
    /// spares the kernel walks; a stale one falls back to dumping.
    public let index: ConntrackIndex?
    private var connection: ConntrackConnection?

    public init(namespace: NetworkNamespace = .current, index: ConntrackIndex? = nil) {
        self.namespace = namespace
        self.index = index
    }

    public func cut(ir: RulesetIR, scope: Revocation.Scope, departed: Set<IPAddress>, local: (any LocalInstances)?) throws -> Revocation.Report {
        do {
            let c = try connection ?? ConntrackConnection(namespace: namespace)
            connection = c
            let namespace = self.namespace
            return try Revocation.run(c, ir: ir, scope: scope, departed: departed,
                                      hostAddresses: { () throws(NetlinkError) in try Revocation.hostAddresses(in: namespace) }, index: index, local: local)
        } catch {
            connection = nil
            throw error
        }
    }
}
