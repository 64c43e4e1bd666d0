/// A kernel interface Rampart programs: nftables over netlink (`NFTablesBackend`) or iptables
/// and ipsets (`IPTablesBackend`). The CLI and the daemon hold an `any FirewallBackend` and
/// never ask which one it is.
///
/// Every backend keeps a mirror of what it last wrote and trusts it only while nobody else can
/// have changed Rampart's objects (nftables: the ruleset generation; iptables: until told
/// otherwise by `invalidate()`). Every change is one transaction: all of it or none of it.
/// A backend is used from one thread at a time.
public protocol FirewallBackend: AnyObject {
    /// Names the backend and its options in summaries, logs and status: `nftables`,
    /// `iptables-nft, routed`.
    var name: String { get }

    /// The kernel's ruleset generation after the last commit or read-back, where the backend
    /// has one (nftables); nil otherwise.
    var generation: UInt32? { get }

    /// Commits `plan` (made by the `Engine` from the state this backend last committed towards
    /// `result`) as one transaction, guarded by the mirror. Throws a `BackendFailure` (or an
    /// error the backend documents) and then trusts its mirror no more.
    @discardableResult
    func commit(_ plan: Plan, result: RulesetIR?) throws -> BackendChange

    /// Brings the kernel to `desired` (nil: remove all of Rampart's objects) from what it holds
    /// now, repairing anything someone else changed in Rampart's objects.
    @discardableResult
    func converge(to desired: RulesetIR?) throws -> BackendChange

    /// What `converge(to:)` would change, changing nothing (`rampart diff`, `apply --dry-run`).
    func pending(to desired: RulesetIR?) throws -> BackendChange

    /// Whether someone else may have changed the kernel since this backend's last commit or
    /// read-back (nftables: one generation query). A backend that cannot tell cheaply answers
    /// false; its periodic `converge` still repairs what was changed.
    func changedByOthers() throws -> Bool

    /// Forgets the mirror: the next commit or converge reads the kernel back first.
    func invalidate()

    /// How many instances the kernel's Rampart objects dispatch to now (read back): what a
    /// first sync of an empty document would remove.
    func enforcedInstances() throws -> Int

    /// What is enforced, read from the kernel for operators (`rampart show`); nil when Rampart
    /// has nothing there.
    func enforcement() throws -> EnforcementReport?

    /// Conditions under which the kernel will not enforce what is committed (for example,
    /// bridged traffic not handed to iptables); empty when there are none.
    func warnings() -> [String]
}

/// What a commit, a converge or a pending change did (or would do).
public struct BackendChange: Sendable {
    /// Nothing was (or would be) changed.
    public var isEmpty: Bool
    /// One line: what changed, in the backend's terms (`2 chains rewritten, 1 element added`).
    /// From counts, it is rendered when read: a daemon's commit (a plug's hot path) does not
    /// pay for a line nobody prints.
    public var summary: String {
        get { summaryLine ?? (isEmpty ? "no changes" : counts.map { "\($0)" } ?? "") }
        set { summaryLine = newValue }
    }
    private var summaryLine: String?
    private var counts: PlanSummary?
    /// The change in the backend's own syntax (nft statements; iptables-restore and ipset
    /// lines), for `diff` and `--dry-run`: filled by `pending` only (a commit does not spend
    /// time rendering what nobody reads).
    public var text: String
    /// The core Plan the change carried out, when the backend worked from one (nftables
    /// always; iptables only in `commit`): revocation reads what narrowed from it.
    public var plan: Plan?
    /// The IR the kernel held before the change, when the backend knew it: tells revocation a
    /// chain that only gained rules from one that lost some.
    public var previous: RulesetIR?
    /// Without a `plan`: the instance addresses the change took off the source checks (those
    /// instances left, or lost an address), whose connections revocation cuts whatever the
    /// policy says. With a plan, revocation reads them from it.
    public var departed: Set<IPAddress> = []
    /// Operations sent (plan ops, or restore/ipset lines).
    public var operations: Int
    /// The ruleset generation after the change, where the backend has one.
    public var generation: UInt32?

    public init(isEmpty: Bool, summary: String, text: String = "", plan: Plan? = nil, previous: RulesetIR? = nil,
                operations: Int, generation: UInt32? = nil) {
        self.isEmpty = isEmpty
        self.summaryLine = summary
        self.text = text
        self.plan = plan
        self.previous = previous
        self.operations = operations
        self.generation = generation
    }

    /// A change whose summary line is `counts`, rendered when read.
    public init(isEmpty: Bool, counts: PlanSummary, text: String = "", plan: Plan? = nil, previous: RulesetIR? = nil,
                operations: Int, generation: UInt32? = nil) {
        self.init(isEmpty: isEmpty, summary: "", text: text, plan: plan, previous: previous, operations: operations, generation: generation)
        summaryLine = nil
        self.counts = counts
    }

    /// No change.
    public static let none = BackendChange(isEmpty: true, summary: "no changes", operations: 0)
}

/// What `rampart show` prints: text for people, JSON for tools.
public struct EnforcementReport: Sendable {
    public var text: String
    /// A JSON document (sorted keys, pretty-printed).
    public var json: String
    public init(text: String, json: String) {
        self.text = text
        self.json = json
    }
}

/// How a backend failure leaves the kernel, which decides the CLI's exit status and the
/// daemon's next step.
public enum BackendFailureKind: Sendable, Hashable {
    /// Someone else changed the kernel between planning and commit; nothing changed (read back
    /// and plan again).
    case conflict
    /// The kernel refused the transaction; nothing changed.
    case refused
    /// The IR asks for something this backend cannot express; nothing changed.
    case unsupported
    /// The outcome is unknown, or the system failed around the kernel call.
    case unknown
}

/// An error a backend throws, classified.
public protocol BackendFailure: Error, CustomStringConvertible {
    var kind: BackendFailureKind { get }
}

extension Error {
    /// How this error leaves the kernel (`unknown` for errors that do not say).
    public var backendFailureKind: BackendFailureKind {
        (self as? any BackendFailure)?.kind ?? .unknown
    }
}
