import RampartCore
import RampartIPTables
import RampartNetlink
import RampartNFTables
import RampartSystem

/// Which backend `rampartd` programs the kernel with, and where: its `--backend`, `--topology`,
/// `--iptables` and `--netns` (the same options as the CLI's). Makes the daemon's backend
/// factory and its conntrack cutter (the cut works for either backend).
public struct DaemonBackend: Sendable {
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

    /// Makes the backend (on the reconciler's thread; again after a failure to connect).
    public var factory: @Sendable () throws -> any FirewallBackend {
        let choice = self
        return {
            switch choice.kind {
            case .nftables: NFTablesBackend(client: try NFTablesConnection(namespace: choice.namespace))
            case .iptables: IPTablesBackend(variant: choice.iptablesVariant ?? .detect(), topology: choice.topology, netns: choice.netns)
            }
        }
    }

    /// The conntrack cut in the same namespace.
    public func cutter() -> ConntrackCutter { ConntrackCutter(namespace: namespace) }
}
