import RampartSystem

/// One operation of a batch. A batch of operations is one nftables transaction: the kernel
/// commits all of them or none.
public enum BatchOperation: Sendable, Hashable, CustomStringConvertible {
    /// Create a table (no error if it exists, like `nft add table`).
    case addTable(NFTTable)
    /// Delete a table with everything in it.
    case deleteTable(family: NFTFamily, name: String)
    /// Create a chain (no error if it exists; a base chain's policy is updated).
    case addChain(NFTChain)
    /// Delete a chain: it must be empty of references (jumps, map elements) by the end of the batch.
    case deleteChain(family: NFTFamily, table: String, name: String)
    /// Remove every rule of a chain.
    case flushChain(family: NFTFamily, table: String, name: String)
    /// Append a rule to its chain.
    case addRule(NFTRule)
    /// Insert a rule into its chain just before the rule whose kernel handle is `before`
    /// (several inserted before the same rule keep the order they are sent in).
    case insertRule(NFTRule, before: UInt64)
    /// Delete one rule, named by its kernel handle. Unlike adding a rule, this does not make the
    /// kernel re-validate the table at commit (netlink notes, "Commit-time validation").
    case deleteRule(family: NFTFamily, table: String, chain: String, handle: UInt64)
    /// Create a set or map (no error if it exists with the same definition).
    case addSet(NFTSetDefinition)
    /// Delete a set or map: no rule may still use it.
    case deleteSet(family: NFTFamily, table: String, name: String)
    /// Remove every element of a set or map.
    case flushSet(family: NFTFamily, table: String, name: String)
    /// Add elements to a set or map; adding an element that exists is not an error.
    /// Large lists are split over several messages of the same batch.
    case addElements(family: NFTFamily, table: String, set: String, elements: [NFTSetElement])
    /// Delete elements; deleting one that does not exist is an error (ENOENT).
    case deleteElements(family: NFTFamily, table: String, set: String, elements: [NFTSetElement])

    /// The table the operation acts in.
    public var tableIdentity: (NFTFamily, String) {
        switch self {
        case .addTable(let t): (t.family, t.name)
        case .deleteTable(let f, let n): (f, n)
        case .addChain(let c): (c.family, c.table)
        case .deleteChain(let f, let t, _), .flushChain(let f, let t, _), .deleteSet(let f, let t, _), .flushSet(let f, let t, _): (f, t)
        case .addRule(let r), .insertRule(let r, _): (r.family, r.table)
        case .deleteRule(let f, let t, _, _): (f, t)
        case .addSet(let s): (s.family, s.table)
        case .addElements(let f, let t, _, _), .deleteElements(let f, let t, _, _): (f, t)
        }
    }

    /// A short name of the object the operation acts on, for errors and logs.
    public var description: String {
        switch self {
        case .addTable(let t): "add table \(t.family) \(t.name)"
        case .deleteTable(let f, let n): "delete table \(f) \(n)"
        case .addChain(let c): "add chain \(c.family) \(c.table) \(c.name)"
        case .deleteChain(let f, let t, let n): "delete chain \(f) \(t) \(n)"
        case .flushChain(let f, let t, let n): "flush chain \(f) \(t) \(n)"
        case .addRule(let r):
            "add rule \(r.family) \(r.table) \(r.chain)" + (r.comment.map { " (comment \"\($0)\")" } ?? "")
        case .insertRule(let r, let before):
            "insert rule \(r.family) \(r.table) \(r.chain) before handle \(before)" + (r.comment.map { " (comment \"\($0)\")" } ?? "")
        case .deleteRule(let f, let t, let c, let h): "delete rule \(f) \(t) \(c) handle \(h)"
        case .addSet(let s): "add \(s.isVerdictMap ? "map" : "set") \(s.family) \(s.table) \(s.name)"
        case .deleteSet(let f, let t, let n): "delete set \(f) \(t) \(n)"
        case .flushSet(let f, let t, let n): "flush set \(f) \(t) \(n)"
        case .addElements(let f, let t, let s, let e): "add element \(f) \(t) \(s) (\(e.count) elements)"
        case .deleteElements(let f, let t, let s, let e): "delete element \(f) \(t) \(s) (\(e.count) elements)"
        }
    }
}

/// An ordered list of operations sent as one transaction (one `sendmsg`).
public struct Batch: Sendable, Hashable {
    public var operations: [BatchOperation]

    public init(_ operations: [BatchOperation] = []) { self.operations = operations }

    public mutating func append(_ op: BatchOperation) { operations.append(op) }
    public mutating func append(contentsOf ops: [BatchOperation]) { operations.append(contentsOf: ops) }

    public var isEmpty: Bool { operations.isEmpty }
}

/// What a successful commit reports.
public struct CommitResult: Sendable, Hashable {
    /// The ruleset generation after this commit (the kernel echoes it).
    public var generation: UInt32
    /// Netlink messages sent (operations plus element-list splits), batch begin/end excluded.
    public var messages: Int
    /// Bytes in the one datagram sent.
    public var bytes: Int

    /// Package-wide, for the fakes in RampartTestSupport.
    package init(generation: UInt32, messages: Int, bytes: Int) {
        self.generation = generation
        self.messages = messages
        self.bytes = bytes
    }
}

extension OperationFailure {
    /// Operation `index` (`operation`) refused with `errno`: package-wide, for the fakes in
    /// RampartTestSupport (`RecordingNFTables` refuses operations the way the kernel does). A
    /// factory, because the memberwise initializer is internal and cannot be redeclared.
    package static func refused(_ operation: BatchOperation, at index: Int, errno: Errno, kernelMessage: String? = nil) -> OperationFailure {
        OperationFailure(index: index, operation: operation, errno: errno, kernelMessage: kernelMessage)
    }
}
