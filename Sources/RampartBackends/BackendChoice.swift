import RampartConntrack
import RampartCore
import RampartIPTables
import RampartNetlink
import RampartNFTables
import RampartSystem

/// Which backend programs the kernel, and where: `--backend`, `--topology`, `--iptables` and
/// `--netns`, the same options for `rampart` and `rampartd`. The one place that turns them into
/// an `any FirewallBackend`, and into the conntrack cutter of that namespace (the cut works
/// for either backend).
public struct BackendChoice: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case nftables, iptables
    }

    public var kind: Kind
    /// A network namespace made by `ip netns add`; nil: the daemon's own.
    public var netns: String?
    /// iptables: how instances are told apart.
    public var topology: IPTTopology
    /// iptables: legacy or nft; nil: what `iptables` runs.
    public var iptablesVariant: IPTablesVariant?

    public init(_ kind: Kind = .nftables, netns: String? = nil, topology: IPTTopology = .routed, iptablesVariant: IPTablesVariant? = nil) {
        self.kind = kind
        self.netns = netns
        self.topology = topology
        self.iptablesVariant = iptablesVariant
    }

    public var namespace: NetworkNamespace { netns.map { .named($0) } ?? .current }

    /// Makes the backend.
    public func makeBackend() throws -> any FirewallBackend {
        switch kind {
        case .nftables: NFTablesBackend(client: try NFTablesConnection(namespace: namespace))
        case .iptables: IPTablesBackend(variant: iptablesVariant ?? .detect(), topology: topology, netns: netns)
        }
    }

    /// `makeBackend` as a factory (the daemon's reconciler calls it on its own thread, and again
    /// after a failure to connect).
    public var factory: @Sendable () throws -> any FirewallBackend {
        let choice = self
        return { try choice.makeBackend() }
    }

    /// The conntrack cut in the same namespace (with `index`: from it while it is fresh).
    public func cutter(index: ConntrackIndex? = nil) -> ConntrackCutter { ConntrackCutter(namespace: namespace, index: index) }
}
