import RampartStore

/// What one refresh (or a drain that covered it) came to.
public enum SyncOutcome: Sendable, Equatable {
    case committed(generation: UInt32?)
    case failed(String)

    public var isCommitted: Bool { if case .committed = self { true } else { false } }
}

/// The coalescing refresh queue: a pure value (no lock, no thread, no kernel), so that its rules
/// are unit-tested on their own. The daemon keeps one under its lock.
///
/// - A refresh marks its group or instance dirty (a set: a thousand calls for the same group are
///   one item) and takes a ticket; tickets are numbered in arrival order.
/// - A pass (`take`) takes everything pending at once; `finish` then answers every ticket up to
///   the pass's last one. A call that arrives during a pass waits for the next one.
/// - Refresh tickets are answered with the outcome of the drain that carried them; resync
///   tickets (`requestResync`) with the resync's own outcome.
/// - At most `capacity` distinct refreshes wait; one already waiting always coalesces into it
///   (it costs nothing), a new one beyond the cap is refused (the API answers 503).
public struct RefreshQueue: Sendable {
    public typealias Reply = @Sendable (SyncOutcome) -> Void

    /// Distinct refreshes waiting, at most.
    public let capacity: Int
    /// Refreshes waiting for the next pass.
    public private(set) var pending = Set<Refresh>()
    /// The last ticket handed out.
    public private(set) var requested: UInt64 = 0
    /// Every ticket up to this one has been covered by a pass.
    public private(set) var completed: UInt64 = 0
    /// A resync was asked for and not yet taken.
    public private(set) var resyncRequested = false
    /// The queue is closed: new waiters are answered at once with `stoppingOutcome`.
    public private(set) var stopping = false
    /// The read-ahead of the pending refreshes (`Work.readAhead`), and whether one came without.
    private var readAhead: ReadAhead?
    private var cameWithoutReadAhead = false

    private var lastOutcome: SyncOutcome = .failed("not synced yet")
    private var waiters: [(ticket: UInt64, reply: Reply)] = []
    /// Tickets of resync requests not yet covered.
    private var resyncTickets = Set<UInt64>()
    /// The outcomes of recent passes, for a ticket whose waiter arrives after its pass.
    private var history: [Pass] = []
    /// Passes remembered for late waiters.
    public static let historyLength = 256
    public static let stoppingOutcome = SyncOutcome.failed("daemon stopping")

    private struct Pass: Sendable {
        /// The tickets after `after` up to `through` were covered by this pass.
        var after: UInt64
        var through: UInt64
        var refresh: SyncOutcome
        var resync: SyncOutcome
        var resyncTickets: Set<UInt64>
        func outcome(_ ticket: UInt64) -> SyncOutcome { resyncTickets.contains(ticket) ? resync : refresh }
    }

    /// What a pass takes: the refreshes to drain, the last ticket it covers, and whether a
    /// resync was asked for.
    public struct Work: Sendable, Equatable {
        public var items: Set<Refresh>
        public var covered: UInt64
        public var resync: Bool
        /// What the items will read, read ahead with them (`ReadAhead`); nil when any item came
        /// without it (the socket API's, a log page too long to read ahead), since an answer
        /// read before such a call may be older than the change it announces.
        public var readAhead: ReadAhead? = nil
    }

    /// What `offer` did.
    public enum Offer: Sendable, Equatable {
        /// Queued (or coalesced) under this ticket.
        case queued(UInt64)
        /// Refused: the queue holds `capacity` other refreshes.
        case full
    }

    public init(capacity: Int = 10_000) {
        self.capacity = max(1, capacity)
    }

    /// Waiters not yet answered.
    public var waiting: Int { waiters.count }

    /// Whether a pass has something to do.
    public var hasWork: Bool { !pending.isEmpty || resyncRequested }

    /// Marks `refresh` dirty, with no cap (internal callers and tests); returns its ticket.
    public mutating func enqueue(_ refresh: Refresh, readAhead ahead: ReadAhead? = nil) -> UInt64 {
        if let ahead, !cameWithoutReadAhead {
            if readAhead == nil { readAhead = ahead } else if readAhead != ahead { readAhead!.merge(ahead) }
        } else {
            cameWithoutReadAhead = true
            readAhead = nil
        }
        pending.insert(refresh)
        requested += 1
        return requested
    }

    /// The API's enqueue: refused when `capacity` distinct refreshes already wait and this one
    /// is not among them. With `reply`, the waiter is registered with the ticket (so that it is
    /// answered by the drain that carries this refresh); if the queue is stopping, the reply is
    /// returned to be called at once (outside the caller's lock).
    /// `readAhead`: what the refresh will read, read with it (the change log's), if anything.
    public mutating func offer(_ refresh: Refresh, reply: Reply? = nil, readAhead ahead: ReadAhead? = nil) -> (Offer, immediate: (Reply, SyncOutcome)?) {
        if !pending.contains(refresh) && pending.count >= capacity { return (.full, nil) }
        let ticket = enqueue(refresh, readAhead: ahead)
        guard let reply else { return (.queued(ticket), nil) }
        if stopping { return (.queued(ticket), (reply, Self.stoppingOutcome)) }
        waiters.append((ticket, reply))
        return (.queued(ticket), nil)
    }

    /// Asks the next pass for a resync; returns its ticket, and the reply to call at once if
    /// the queue is stopping.
    public mutating func requestResync(reply: Reply? = nil) -> (UInt64, immediate: (Reply, SyncOutcome)?) {
        resyncRequested = true
        requested += 1
        resyncTickets.insert(requested)
        guard let reply else { return (requested, nil) }
        if stopping { return (requested, (reply, Self.stoppingOutcome)) }
        waiters.append((requested, reply))
        return (requested, nil)
    }

    /// The outcome of `ticket` if it is known now (covered, or the queue stopping); otherwise
    /// registers `reply` for it and returns nil.
    public mutating func wait(for ticket: UInt64, reply: @escaping Reply) -> SyncOutcome? {
        if stopping { return Self.stoppingOutcome }
        if ticket <= completed { return outcome(ofCovered: ticket) }
        waiters.append((ticket, reply))
        return nil
    }

    private func outcome(ofCovered ticket: UInt64) -> SyncOutcome {
        history.first(where: { $0.after < ticket && ticket <= $0.through })?.outcome(ticket) ?? lastOutcome
    }

    /// Takes everything pending for one pass (the resync request too).
    public mutating func take() -> Work {
        let work = Work(items: pending, covered: requested, resync: resyncRequested, readAhead: cameWithoutReadAhead ? nil : readAhead)
        pending = []
        resyncRequested = false
        readAhead = nil
        cameWithoutReadAhead = false
        return work
    }

    /// Ends a pass that covered the tickets up to `covered`: returns the waiters to answer and
    /// their outcomes (to be called outside the caller's lock).
    public mutating func finish(through covered: UInt64, refresh: SyncOutcome, resync: SyncOutcome) -> [(Reply, SyncOutcome)] {
        let through = max(completed, covered)
        let tickets = resyncTickets.filter { $0 <= covered }
        resyncTickets.subtract(tickets)
        let pass = Pass(after: completed, through: through, refresh: refresh, resync: resync, resyncTickets: tickets)
        completed = through
        history.append(pass)
        if history.count > Self.historyLength { history.removeFirst(history.count - Self.historyLength) }
        var ready: [(Reply, SyncOutcome)] = []
        waiters.removeAll { w in
            guard w.ticket <= covered else { return false }
            ready.append((w.reply, pass.outcome(w.ticket)))
            return true
        }
        var failure: String?
        for o in [refresh, resync] { if case .failed(let e) = o { failure = e } }
        lastOutcome = failure.map { .failed($0) } ?? refresh
        return ready
    }

    /// Closes the queue: from now on, waiters are answered `stoppingOutcome` at once. Those
    /// already waiting are still answered by the pass in progress, if it covers them.
    public mutating func stop() {
        stopping = true
    }

    /// Removes every waiter (when the last pass is over), to be answered `stoppingOutcome`.
    public mutating func removeWaiters() -> [Reply] {
        let ws = waiters.map(\.reply)
        waiters = []
        return ws
    }
}
