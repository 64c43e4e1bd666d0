/// One table as read back from the kernel: its chains, rules (in order), sets and maps with
/// their elements, at one ruleset generation.
public struct TableSnapshot: Sendable, Hashable {
    public var table: NFTTable
    /// Chains in the kernel's order.
    public var chains: [NFTChain]
    /// Rules of each chain, in order (chains without rules map to an empty list).
    public var rules: [String: [NFTRule]]
    /// Sets and maps.
    public var sets: [NFTSetDefinition]
    /// Elements of each set or map. Interval sets come back as ranges (`rangeEnd`).
    public var elements: [String: [NFTSetElement]]
    /// The ruleset generation the snapshot was read at (unchanged from start to end of the read).
    public var generation: UInt32

    public init(table: NFTTable, chains: [NFTChain] = [], rules: [String: [NFTRule]] = [:], sets: [NFTSetDefinition] = [],
                elements: [String: [NFTSetElement]] = [:], generation: UInt32 = 0) {
        self.table = table
        self.chains = chains
        self.rules = rules
        self.sets = sets
        self.elements = elements
        self.generation = generation
    }

    public func chain(_ name: String) -> NFTChain? { chains.first { $0.name == name } }
    public func set(_ name: String) -> NFTSetDefinition? { sets.first { $0.name == name } }
}
