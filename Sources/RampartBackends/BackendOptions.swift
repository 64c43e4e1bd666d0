import ArgumentParser
import RampartIPTables

/// `--netns`, `--backend`, `--topology` and `--iptables`: one declaration for `rampart` and
/// `rampartd`, so the two always take the same options with the same help.
public struct BackendOptions: ParsableArguments {
    @Option(name: .long, help: "Act in this network namespace (as made by `ip netns add`) instead of the current one.")
    public var netns: String?

    @Option(help: "Which backend programs the kernel: nftables (default) or iptables.")
    public var backend: BackendChoice.Kind = .nftables

    @Option(help: "iptables backend: how instances are told apart, routed (default) or bridged (physdev).")
    public var topology: IPTTopology = .routed

    @Option(name: .customLong("iptables"), help: "iptables backend: legacy or nft (default: what `iptables` runs).")
    public var iptablesVariant: IPTablesVariant?

    public init() {}

    /// The backend these options name.
    public var choice: BackendChoice { BackendChoice(backend, netns: netns, topology: topology, iptablesVariant: iptablesVariant) }
}

extension BackendChoice.Kind: ExpressibleByArgument {}
extension IPTTopology: ExpressibleByArgument {}
extension IPTablesVariant: ExpressibleByArgument {}
