import RampartCore
import RampartNetlink

/// The nftables backend: keeps the kernel's `inet rampart` table equal to a desired IR, one
/// atomic transaction per change, and never touches anything outside that table.
///
/// It keeps a mirror of what it last committed, with the ruleset generation of that commit.
/// The mirror is trusted only while the generation says nobody else committed; otherwise the
/// table is read back (and anything someone else changed in it is planned for repair). Every
/// commit carries the generation it was planned against, so a concurrent writer makes it fail
/// cleanly (`NetlinkError.generationChanged`) instead of being overwritten blindly.
public final class NFTablesBackend {
    public let client: NFTablesClient
    public let table: String
    /// How instance dispatch is laid out in the kernel (`NFTLayout`).
    public let layout: NFTLayout
    /// What Rampart believes the kernel holds (nil: no table), valid at `mirrorGeneration` when
    /// `mirrorKnown`. Set by a read-back and by `converge`; a plain `commit` does not keep its
    /// result: its caller (an engine) owns that IR and changes it next, and a second reference
    /// here would make every change copy the sets it touches (copy-on-write), a cost that grows
    /// with the host. After a commit, `committed` reads the table back.
    public private(set) var mirror: RulesetIR?
    private var mirrorKnown = false
    public private(set) var mirrorGeneration: UInt32?
    /// What the kernel holds of the slot layout's own objects, valid with the mirror.
    var slots = SlotState()
    /// Whether the slot layout edits a rewritten group chain rule by rule (`ChainEdit`, the
    /// default) instead of flushing and re-filling it; off only to measure the difference.
    public var editsGroupChains = true
    /// Whether the slot layout holds group chains' rules as elements of shared sets
    /// (`RuleShapes`, the default) instead of as rules; off only to measure the difference. A
    /// table written the other way reads back as drifted group chains and is converted by the
    /// repair.
    public var groupRulesAsElements = true {
        didSet { if groupRulesAsElements != oldValue { invalidate() } }
    }

    /// Whether a group whose rules of a direction accept all of a family and nothing else, or
    /// have no rules, goes without a chain of its own (`GroupForm`, the default); off only to
    /// measure the difference (every group chain is then its own, as before).
    public var sharesGroupChains = true {
        didSet { if sharesGroupChains != oldValue { invalidate() } }
    }

    /// The smallest size the slot layout creates its large sets with (`SetSizes`; the default
    /// 1,024). Lower only to make tests outgrow them.
    public var minimumSetSize: UInt32 = SetSizes.defaultMinimum
    /// Whether the slot layout creates its large sets with a size (`SetSizes`, the default);
    /// off only to measure the difference (a table is then created as before, its sets
    /// resizable and unlimited).
    public var sizesLargeSets = true {
        didSet { if sizesLargeSets != oldValue { invalidate() } }
    }
    /// Commits sent as a rebuild of the table because a set would have outgrown its size
    /// (`SetSizes`), since this backend was made.
    public private(set) var sizeRebuilds = 0

    public init(client: NFTablesClient, table: String = Naming.table, layout: NFTLayout = .slots) {
        self.client = client
        self.table = table
        self.layout = layout
    }

    /// Reads the table back as IR (see `Observe`); `reference` is the IR expected, against which
    /// rule bytecode is compared. Updates the mirror.
    public func readBack(reference: RulesetIR?) throws(NetlinkError) -> RulesetIR? {
        while true {
            let before = try client.generation()
            if let snap = try client.readTable(family: .inet, name: table) {
                (mirror, slots) = Observe.read(snap, reference: reference, layout: layout, rulesAsElements: groupRulesAsElements)
                mirrorKnown = true
                mirrorGeneration = snap.generation
                return mirror
            }
            // No table: trust its absence only if nobody committed around the read.
            if try client.generation() == before {
                mirror = nil
                mirrorKnown = true
                slots = SlotState()
                mirrorGeneration = before
                return nil
            }
        }
    }

    /// What the kernel holds: the mirror while nobody else has committed, else a read-back.
    public func committed(reference: RulesetIR?) throws(NetlinkError) -> RulesetIR? {
        if mirrorKnown, let g = mirrorGeneration, try client.generation() == g { return mirror }
        return try readBack(reference: reference)
    }

    /// Forgets the mirror: the next `committed` reads the table back.
    public func invalidate() {
        mirrorGeneration = nil
    }

    /// Commits `plan` as one transaction, guarded by the last known generation; `result` is the
    /// IR the plan leads to (the slot layout lowers against it). It is not kept as the mirror
    /// (see `mirror`): the caller owns it.
    @discardableResult
    public func commit(_ plan: Plan, result: RulesetIR?) throws(NetlinkError) -> BackendChange {
        try commit(plan, result: result, keepMirror: false)
    }

    /// `keepMirror`: keep `result` as the mirror (what `converge` does).
    private func commit(_ plan: Plan, result: RulesetIR?, keepMirror: Bool) throws(NetlinkError) -> BackendChange {
        guard !plan.isEmpty else { return .none }
        let previous = mirrorKnown && mirrorGeneration != nil ? mirror : nil
        // The slot layout lowers against what the kernel holds of its objects: unknown after a
        // failure or an `invalidate`, so read it back first (the generation guard then holds too).
        if layout == .slots && mirrorGeneration == nil { _ = try readBack(reference: result) }
        // The slot state moves into the lowering (taken, not shared): it changes what the plan
        // touches in place, where a shared copy would be copied whole, at every commit.
        var working = SlotState()
        swap(&working, &slots)
        let batch: Batch, rebuilt: Bool
        do {
            (batch, rebuilt) = try lower(plan, result: result, state: &working, heldRules: heldRules(plan))
        } catch let error {
            mirrorGeneration = nil  // the slot state is gone: the next converge reads back
            throw error
        }
        do {
            let r = try client.commit(batch, expectedGeneration: mirrorGeneration)
            mirror = keepMirror ? result : nil
            mirrorKnown = keepMirror
            swap(&slots, &working)
            mirrorGeneration = r.generation
            lastCommit = r
            if rebuilt { sizeRebuilds += 1 }
            return change(plan, batch: batch, previous: previous, generation: r.generation, rebuilt: rebuilt)
        } catch let error {
            // Whatever happened, the mirror (and the slot state) can no longer be trusted
            // without a look.
            mirrorGeneration = nil
            throw error
        }
    }

    /// What the last successful commit sent (messages and bytes of its one datagram).
    public private(set) var lastCommit: CommitResult?

    /// `rendered`: the nft text too (only `pending` pays for it: a commit's hot path does not).
    /// `batch`: what was sent, which the summary counts in the slot layout.
    /// `rebuilt`: the batch rebuilt the table (a set outgrew its size), which the summary says.
    private func change(_ plan: Plan, batch: Batch? = nil, previous: RulesetIR?, generation: UInt32?, rendered: Bool = false,
                        rebuilt: Bool = false) -> BackendChange {
        var summary = layout == .slots && batch != nil ? SlotRender.summary(plan, batch: batch!) : plan.summary
        if rebuilt { (summary.tableCreated, summary.tableDeleted) = (true, true) }
        return BackendChange(isEmpty: plan.isEmpty, counts: summary,
                      text: rendered && !plan.isEmpty ? Render.plan(plan, table: table) : "", plan: plan, previous: previous,
                      operations: plan.ops.count, generation: generation)
    }

    /// Brings the table to `desired` (nil: no table): plan from what the kernel holds, commit,
    /// and if someone else committed in between, plan again from a fresh read-back.
    @discardableResult
    public func converge(to desired: RulesetIR?) throws(NetlinkError) -> BackendChange {
        try converge(to: desired, attempts: 5)
    }

    /// `converge(to:)`, planning again at most `attempts` times while others commit.
    @discardableResult
    public func converge(to desired: RulesetIR?, attempts: Int) throws(NetlinkError) -> BackendChange {
        var attempt = 0
        while true {
            attempt += 1
            let current = try committed(reference: desired)
            let plan = diff(from: current, to: desired)
            do {
                var c = try commit(plan, result: desired, keepMirror: true)
                c.previous = current
                c.plan = plan
                c.generation = mirrorGeneration
                return c
            } catch let error {
                guard case .generationChanged = error, attempt < attempts else { throw error }
            }
        }
    }

    /// What `converge` would commit, from a fresh read-back, changing nothing.
    public func pending(to desired: RulesetIR?) throws(NetlinkError) -> BackendChange {
        let current = try readBack(reference: desired)
        let plan = diff(from: current, to: desired)
        guard layout == .slots, !plan.isEmpty else {
            return change(plan, previous: current, generation: mirrorGeneration, rendered: true)
        }
        let batch = try self.batch(for: plan, result: desired)
        var c = change(plan, batch: batch, previous: current, generation: mirrorGeneration)
        c.text = SlotRender.text(plan, batch: batch, table: table)
        return c
    }

    /// The batch a plan would be sent as (for tests and `--dry-run` diagnostics).
    public func batch(for plan: Plan, result: RulesetIR?) throws(NetlinkError) -> Batch {
        var copy = slots
        return try lower(plan, result: result, state: &copy, heldRules: heldRules(plan)).batch
    }

    /// The rules the kernel holds now, with their handles, in each group chain that `plan`
    /// rewrites once and neither creates nor deletes: the slot layout edits those rule by rule
    /// (`ChainEdit`), so that revoking a rule deletes one rule instead of re-adding the others,
    /// which made the kernel re-validate the whole table. One rule dump of that chain each (the
    /// kernel walks only that chain). Read at the generation the commit is guarded by: if anyone
    /// committed since, the commit is refused whatever was read here.
    private func heldRules(_ plan: Plan) -> (String) -> [NFTRule]? {
        let none: (String) -> [NFTRule]? = { _ in nil }
        guard layout == .slots, editsGroupChains else { return none }
        var rewrites: [String: Int] = [:]
        var createdOrDeleted = Set<String>()
        for op in plan.ops {
            switch op {
            case .createTable, .deleteTable: return none
            case .rewriteChain(let n, _):
                if case .group? = Slots.kind(of: n) { rewrites[n, default: 0] += 1 }
            case .createChain(let h): createdOrDeleted.insert(h.name)
            case .deleteChain(let n): createdOrDeleted.insert(n)
            default: break
            }
        }
        // A plan rewriting many group chains (a repair, a rebuilt document) is sent whole: a
        // dump per chain would cost more than it saves, and such a plan adds rules anyway.
        guard rewrites.count <= Self.maxEditedChains else { return none }
        let editable = Set(rewrites.filter { $0.value == 1 && !createdOrDeleted.contains($0.key) }.keys)
        let client = self.client, table = self.table
        // Read when the lowering asks: with rules as elements most rewrites change elements only
        // and read nothing. A failed read costs the edit, not the commit: that chain is
        // rewritten whole.
        return { n in
            guard editable.contains(n) else { return nil }
            return (try? client.readRules(family: Translate.family, table: table, chain: n)) ?? nil
        }
    }

    /// At most this many group chains of one plan are edited rule by rule (`heldRules`).
    static let maxEditedChains = 64

    /// The plan in this backend's layout; `state` (the slot layout's) is brought to what the
    /// kernel will hold once the batch commits, in place. `rebuilt`: the plan would have taken
    /// a sized set past its size (`SetSizes`), so the batch rebuilds the table instead.
    private func lower(_ plan: Plan, result: RulesetIR?, state: inout SlotState,
                       heldRules: @escaping (String) -> [NFTRule]?) throws(NetlinkError) -> (batch: Batch, rebuilt: Bool) {
        switch layout {
        case .instanceChains:
            return (Translate.batch(plan, table: table, desired: result), false)
        case .slots:
            var l = slotLowering(result)
            l.heldRules = heldRules
            swap(&l.state, &state)  // the lowering owns the only reference while it works
            defer { swap(&l.state, &state) }
            let batch = try l.batch(plan)
            guard !l.outgrown.isEmpty else { return (batch, false) }
            // A plan to no table adds nothing, so `result` is there.
            guard let result else { throw .protocolError("slot layout: set \(l.outgrown[0]) outgrown by a plan to no table") }
            // One transaction: the table deleted and created again with sizes for what it now
            // holds (its secret kept, so its group keys stay the same).
            var r = slotLowering(result)
            swap(&r.state, &l.state)
            defer { swap(&r.state, &l.state) }
            return (try r.batch(Plan(ops: [.deleteTable] + diff(from: nil, to: result).ops)), true)
        }
    }

    private func slotLowering(_ result: RulesetIR?) -> SlotLowering {
        var l = SlotLowering(table: table, desired: result, state: SlotState())
        l.rulesAsElements = groupRulesAsElements
        l.sharesGroupChains = sharesGroupChains
        l.minimumSetSize = minimumSetSize
        l.sizesSets = sizesLargeSets
        return l
    }
}
