import Foundation
import Logging
import NIOCore
import RampartStore
import RampartSystem

/// One authenticated connection, as the hub sees it. Its fields are guarded by the hub's lock.
final class Subscriber: @unchecked Sendable {
    let id: Int
    let host: String
    let channel: any Channel
    /// Everything of the host's log through this position was sent (nil: not subscribed yet).
    var position: Int64?
    /// Served from the host's window as rows come (false: waiting for a catch-up from the store).
    var synced = false
    /// The highest position this connection was told about (welcome or rows): acks are capped
    /// to it, so a daemon cannot record rows it was never sent.
    var told: Int64 = 0
    var acked: Int64 = 0
    /// Bytes handed to the connection and not yet written to its socket.
    var queuedBytes = 0
    /// Its buffer overflowed: nothing more is queued; once it drains, a reload is sent.
    var overflowed = false
    var gone = false

    init(id: Int, host: String, channel: any Channel) {
        self.id = id
        self.host = host
        self.channel = channel
    }
}

/// The relay's core: one reader of the change log for every subscribed host. Woken by one
/// LISTEN (`ChangeWakeups`), its thread reads the new rows of the hosts named, in one
/// statement (`ChangeLog.entries(positions:limit:)`), keeps each host's last rows in a window
/// and hands every synced subscriber its own host's rows in order. Subscribers behind the
/// window are caught up from the store; acknowledgements are written in batches
/// (`recordApplied(_:)`). The thread never waits for a subscriber: a subscriber whose buffer
/// is full is cut off and told to reload once it drained (docs/relay.md).
public final class RelayHub: @unchecked Sendable {
    public struct Settings: Sendable {
        /// Rows kept in memory per host.
        public var windowRows = 256
        /// Rows read per host per statement, and per catch-up step.
        public var batch = 1000
        /// Bytes queued for one subscriber, at most, before it is cut off and told to reload.
        public var maxBufferedBytes = 1 << 20
        /// Subscribers at once; the next `hello` is refused (its daemon tries another relay).
        public var maxSubscribers = 20_000
        /// Subscribers of one host at once: a `hello` past it closes that host's oldest
        /// connection. A daemon has one; a restarted daemon's new connection can meet its old
        /// one not yet found dead. Without it, one host's token could fill the relay.
        public var maxSubscribersPerHost = 2
        /// Acknowledgements are gathered this long (seconds) before one write to the store.
        public var ackFlushInterval = 0.005
        /// Seconds between reads of every window when no wake-up came (a missed NOTIFY costs
        /// latency, never a row).
        public var pollInterval = 10.0
        /// Reconnect backoff to the store, seconds.
        public var minBackoff = 0.1
        public var maxBackoff = 5.0
        public init() {}
    }

    let log: any ChangeLog
    let wakeups: any ChangeWakeups
    let tokens: TokenFile
    public let settings: Settings
    let logger: Logger

    private let condition: NSCondition
    /// The reader thread, and whether it was asked to stop (under `condition`).
    private let loop: LoopThread
    // Guarded by `condition`:
    private var windows: [String: Window] = [:]
    private var subscribers: [String: [Int: Subscriber]] = [:]
    private var subscriberCount = 0
    private var nextID = 0
    private var dirty: Set<String> = []
    private var allDirty = false
    private var catchUps: [Subscriber] = []
    private var welcomes: [Subscriber] = []
    private var acks: [String: Int64] = [:]
    private var firstAck: Date?
    private var listening = false
    private var stats = RelayStatistics()

    /// `log` must be used by this hub only (its thread is the one that calls it).
    public init(log: any ChangeLog, wakeups: any ChangeWakeups, tokens: TokenFile, settings: Settings = Settings(), logger: Logger) {
        self.log = log
        self.wakeups = wakeups
        self.tokens = tokens
        self.settings = settings
        self.logger = logger
        let c = NSCondition()
        condition = c
        loop = LoopThread(condition: c)
    }

    // MARK: life cycle

    /// Starts the reader thread (it connects the LISTEN and retries while the store is down).
    public func start() {
        loop.start(name: "relay-reader") { [self] in run() }
    }

    /// Stops the reader (after the step in progress) and the LISTEN; subscribers stay open
    /// until the server closes them.
    public func stop() {
        loop.stop()
        wakeups.stop()
    }

    /// The counters now.
    public func statistics() -> RelayStatistics {
        condition.withLock {
            var s = stats
            s.subscribers = subscriberCount
            s.hosts = windows.count
            var behind = 0, worst = 0
            for subs in subscribers.values {
                for sub in subs.values {
                    guard let p = sub.position, sub.acked < p else { continue }
                    behind += 1
                    if let w = windows[sub.host], w.covers(sub.acked) { worst = max(worst, w.rows(after: sub.acked).count) }
                }
            }
            s.behind = behind
            s.maxUnackedRows = worst
            return s
        }
    }

    /// The subscribers behind: for each, its host and how many rows it was sent and has not
    /// acknowledged, the `limit` furthest behind first. Counted in the host's window while the
    /// window holds the subscriber's last ack (sequence numbers are global, with gaps); beyond
    /// it, the distance in sequence numbers (an upper bound). For `/metrics`: a label per host
    /// only while it lags, so thousands of healthy hosts do not become thousands of series.
    public func lagging(limit: Int) -> [(host: String, rows: Int64)] {
        let all: [(host: String, rows: Int64)] = condition.withLock {
            subscribers.values.flatMap { subs in
                subs.values.compactMap { sub -> (host: String, rows: Int64)? in
                    guard let p = sub.position, sub.acked < p else { return nil }
                    if let w = windows[sub.host], w.covers(sub.acked) { return (sub.host, Int64(w.rows(after: sub.acked).count)) }
                    return (sub.host, p - sub.acked)
                }
            }
        }
        return Array(all.sorted { ($0.rows, $1.host) > ($1.rows, $0.host) }.prefix(limit))
    }

    // MARK: connections (called on their event loops: never blocks on the store)

    /// A `hello`: the subscriber if its token is its host's and there is room, else why not.
    func hello(host: String, token: String, channel: any Channel) -> Result<Subscriber, RelayError> {
        if let why = tokens.refusal(host: host, token: token) {
            condition.withLock { stats.refused += 1 }
            return .failure(RelayError(why))
        }
        var evicted: [any Channel] = []
        let result = condition.withLock { () -> Result<Subscriber, RelayError> in
            guard subscriberCount < settings.maxSubscribers else {
                stats.refused += 1
                return .failure(RelayError("this relay is full (\(settings.maxSubscribers) subscribers): try another"))
            }
            // The host's oldest connections make room (detached now, told and closed below):
            // the newest is the daemon that is alive.
            if let mine = subscribers[host], mine.count >= settings.maxSubscribersPerHost {
                for old in mine.values.sorted(by: { $0.id < $1.id }).prefix(mine.count - settings.maxSubscribersPerHost + 1) {
                    detachLocked(old)
                    evicted.append(old.channel)
                }
            }
            nextID += 1
            let sub = Subscriber(id: nextID, host: host, channel: channel)
            subscribers[host, default: [:]][sub.id] = sub
            subscriberCount += 1
            // The head comes from the store: the daemon loads its document after it.
            welcomes.append(sub)
            condition.signal()
            return .success(sub)
        }
        // Outside the lock: on the caller's own event loop the write and the close run at once,
        // and the closed connection's handler detaches (takes the lock) as it goes.
        for ch in evicted {
            ch.writeAndFlush(RelayMessage.error("another connection said hello as \(host): closing the oldest").line(allocator: ch.allocator))
                .whenComplete { _ in ch.close(promise: nil) }
        }
        return result
    }

    /// A `subscribe`: rows after `after`, from the window or, behind it, from the store.
    func subscribe(_ sub: Subscriber, host: String, after: Int64) -> RelayError? {
        guard host == sub.host else {
            condition.withLock { stats.refused += 1 }
            return RelayError("a subscription for host \(host) on a connection authenticated as \(sub.host): a daemon may only subscribe to its own host")
        }
        guard after >= 0 else { return RelayError("subscribe: after must be 0 or more") }
        condition.withLock {
            sub.position = after
            sub.synced = false
            sub.overflowed = false
            sub.told = max(sub.told, after)
            if !serveFromWindow(sub) {
                catchUps.append(sub)
                condition.signal()
            }
        }
        return nil
    }

    /// An `ack`: the daemon applied everything through `seq`; written with the next batch.
    func ack(_ sub: Subscriber, _ seq: Int64) {
        condition.withLock {
            let s = min(seq, sub.told)
            guard s > sub.acked else { return }
            sub.acked = s
            acks[sub.host] = max(acks[sub.host] ?? 0, s)
            if firstAck == nil {
                firstAck = Date()
                condition.signal()
            }
        }
    }

    /// The connection closed.
    func detach(_ sub: Subscriber) {
        condition.withLock { detachLocked(sub) }
    }

    /// `detach` with the lock held (once per subscriber: a second call does nothing).
    private func detachLocked(_ sub: Subscriber) {
        guard !sub.gone else { return }
        sub.gone = true
        subscribers[sub.host]?[sub.id] = nil
        subscriberCount -= 1
        if subscribers[sub.host]?.isEmpty ?? false {
            // Nobody follows the host here any more: its window would only go stale.
            subscribers[sub.host] = nil
            windows[sub.host] = nil
        }
    }

    /// Wake-ups from the LISTEN connection.
    private func wake(_ w: Wakeup) {
        condition.withLock {
            switch w {
            case .appended(let hosts?):
                for h in hosts where subscribers[h] != nil { dirty.insert(h) }
            case .appended(nil):
                allDirty = true
            case .lost(let why):
                logger.warning("store wake-ups lost; reconnecting", metadata: ["error": "\(why)"])
                listening = false
            }
            condition.signal()
        }
    }

    // MARK: sending (under the lock)

    /// Serves `sub` from its host's window if it covers its position; false if it needs the store.
    private func serveFromWindow(_ sub: Subscriber) -> Bool {
        guard let p = sub.position, let w = windows[sub.host], w.covers(p) else { return false }
        sub.synced = true
        let through = max(w.head, p)
        if send(sub, .rows(w.rows(after: p), after: p, through: through, head: w.head), rows: w.rows(after: p).count) { sub.position = through }
        return true
    }

    /// Queues a message unless the subscriber's buffer is full; then it is cut off until drained.
    /// True if queued: only then may the caller move the subscriber's position, which is the
    /// last `through` it was sent — the `after` of the reload it gets once drained, which it
    /// accepts only if it follows on from what it has (a position moved past a dropped message
    /// made it ignore the reload and every message after it: the host's rows stopped until the
    /// connection broke).
    @discardableResult
    private func send(_ sub: Subscriber, _ message: RelayMessage, rows: Int = 0) -> Bool {
        guard !sub.gone, !sub.overflowed else { return false }
        let buffer = message.line(allocator: sub.channel.allocator)
        let size = buffer.readableBytes
        // An empty buffer always takes one message, however large: a big verb still goes out.
        if sub.queuedBytes > 0 && sub.queuedBytes + size > settings.maxBufferedBytes {
            sub.overflowed = true
            return false
        }
        sub.queuedBytes += size
        if let t = message.through { sub.told = max(sub.told, t) }
        stats.rowsSent += rows
        // Never write under this lock: on the connection's own event loop a write runs at once,
        // and a write that fails closes the connection, whose handler then takes this lock
        // (`detach`). Tasks on one loop run in order, so the messages keep theirs.
        let channel = sub.channel
        channel.eventLoop.execute { [self] in
            channel.writeAndFlush(buffer).whenComplete { _ in channel.eventLoop.execute { self.written(sub, size) } }
        }
        return true
    }

    /// A write reached the socket (or failed: the connection is closing).
    private func written(_ sub: Subscriber, _ size: Int) {
        condition.withLock {
            sub.queuedBytes -= size
            guard sub.overflowed, sub.queuedBytes == 0, !sub.gone, let p = sub.position else { return }
            // Drained: what it missed is a reload, then it follows the window again.
            sub.overflowed = false
            stats.reloadsOverflow += 1
            let head = max(windows[sub.host]?.head ?? p, p)
            if send(sub, .reload(after: p, through: head)) { sub.position = head }
            if !serveFromWindow(sub) {
                sub.synced = false
                catchUps.append(sub)
                condition.signal()
            }
        }
    }

    // MARK: the reader thread

    private struct Work {
        var refresh: [String: Int64] = [:]
        var catchUps: [(Subscriber, Int64)] = []
        var welcomes: [Subscriber] = []
        var acks: [String: Int64] = [:]
        var isEmpty: Bool { refresh.isEmpty && catchUps.isEmpty && welcomes.isEmpty && acks.isEmpty }
    }

    private func run() {
        var backoff = settings.minBackoff
        var pending = Work()
        while !condition.withLock({ loop.stopping }) {
            do {
                if !condition.withLock({ listening }) {
                    try wakeups.start { [weak self] in self?.wake($0) }
                    condition.withLock {
                        listening = true
                        // NOTIFYs may have been missed while not listening.
                        allDirty = true
                    }
                    logger.info("listening for change-log wake-ups")
                }
                if pending.isEmpty { pending = takeWork() }
                try perform(pending)
                pending = Work()
                condition.withLock { stats.connected = true }
                backoff = settings.minBackoff
            } catch {
                logger.error("store unreachable; subscribers keep their position", metadata: ["error": "\(error)"])
                condition.withLock {
                    stats.connected = false
                    listening = false
                    _ = condition.wait(until: Date(timeIntervalSinceNow: backoff))
                }
                wakeups.stop()
                backoff = min(backoff * 2, settings.maxBackoff)
            }
        }
    }

    /// Waits for something to do (or the poll interval) and takes it.
    private func takeWork() -> Work {
        condition.withLock {
            let poll = Date(timeIntervalSinceNow: settings.pollInterval)
            while !loop.stopping && listening {
                let ackDue = firstAck.map { Date().timeIntervalSince($0) >= settings.ackFlushInterval } ?? false
                if !dirty.isEmpty || allDirty || !catchUps.isEmpty || !welcomes.isEmpty || ackDue { break }
                let until = firstAck.map { $0.addingTimeInterval(settings.ackFlushInterval) } ?? poll
                if !condition.wait(until: min(until, poll)) && Date() >= poll {
                    allDirty = true
                    break
                }
            }
            var work = Work()
            let hosts = allDirty ? Set(windows.keys) : dirty
            for h in hosts { if let w = windows[h] { work.refresh[h] = w.head } }
            dirty = []
            allDirty = false
            // One catch-up per host per round: positions are per host in one statement.
            var seen: Set<String> = []
            var later: [Subscriber] = []
            for sub in catchUps where !sub.gone {
                if seen.insert(sub.host).inserted, let p = sub.position { work.catchUps.append((sub, p)) } else { later.append(sub) }
            }
            catchUps = later
            work.welcomes = welcomes.filter { !$0.gone }
            welcomes = []
            if let first = firstAck, Date().timeIntervalSince(first) >= settings.ackFlushInterval || loop.stopping {
                work.acks = acks
                acks = [:]
                firstAck = nil
            }
            return work
        }
    }

    /// Runs one round against the store; on failure, what was taken is put back.
    private func perform(_ work: Work) throws(StoreError) {
        do {
            if !work.acks.isEmpty {
                try log.recordApplied(work.acks)
                condition.withLock {
                    stats.acksWritten += work.acks.count
                    stats.ackWrites += 1
                }
            }
            if !work.welcomes.isEmpty {
                let heads = try log.entries(positions: Dictionary(work.welcomes.map { ($0.host, Int64.max) }, uniquingKeysWith: max), limit: 0)
                condition.withLock {
                    stats.storeReads += 1
                    for sub in work.welcomes where !sub.gone {
                        let head = heads[sub.host]?.head ?? 0
                        sub.told = max(sub.told, head)
                        send(sub, .welcome(head: head))
                    }
                }
            }
            if !work.refresh.isEmpty {
                let pages = try log.entries(positions: work.refresh, limit: settings.batch)
                condition.withLock {
                    stats.storeReads += 1
                    for (host, page) in pages { advance(host, from: work.refresh[host]!, page) }
                }
            }
            if !work.catchUps.isEmpty {
                let pages = try log.entries(positions: Dictionary(work.catchUps.map { ($0.0.host, $0.1) }, uniquingKeysWith: min), limit: settings.batch)
                condition.withLock {
                    stats.storeReads += 1
                    for (sub, p) in work.catchUps { if let page = pages[sub.host] { catchUp(sub, from: p, page) } }
                }
            }
        } catch {
            condition.withLock {
                for (h, s) in work.acks { acks[h] = max(acks[h] ?? 0, s) }
                if !work.acks.isEmpty && firstAck == nil { firstAck = Date() }
                welcomes += work.welcomes
                dirty.formUnion(work.refresh.keys)
                catchUps += work.catchUps.map(\.0)
            }
            throw error
        }
    }

    /// New rows of `host`'s log after its window's head: into the window, out to its synced
    /// subscribers. Under the lock.
    private func advance(_ host: String, from position: Int64, _ page: LogPage) {
        guard var w = windows[host], w.head == position else { return }
        stats.rowsRead += page.entries.count
        let full = page.entries.count >= settings.batch
        if full { dirty.insert(host) }
        if page.trimmed {
            // Trimmed past the window (a relay far behind): every subscriber reloads.
            windows[host] = Window(from: page.head)
            for sub in (subscribers[host] ?? [:]).values where sub.synced {
                guard let p = sub.position, p < page.head else { continue }
                stats.reloadsTrimmed += 1
                if send(sub, .reload(after: p, through: page.head)) { sub.position = page.head }
            }
            return
        }
        // A full page may stop short of the head: only the rows read are known.
        w.append(page.entries, head: full ? (page.entries.last?.sequence ?? position) : page.head, capacity: settings.windowRows)
        windows[host] = w
        for sub in (subscribers[host] ?? [:]).values where sub.synced && !sub.overflowed {
            guard let p = sub.position, w.head > p else { continue }
            let rows = w.rows(after: p)
            if send(sub, .rows(rows, after: p, through: w.head, head: w.head), rows: rows.count) { sub.position = w.head }
        }
    }

    /// A catch-up read for `sub` (rows after `position`): sent; then it follows the window if
    /// that covers it, else it is caught up further. Under the lock.
    private func catchUp(_ sub: Subscriber, from position: Int64, _ page: LogPage) {
        // An overflowed subscriber is caught up after it drains (`written`), not read for now.
        guard !sub.gone, !sub.overflowed, sub.position == position, !sub.synced else { return }
        stats.rowsRead += page.entries.count
        let complete = page.entries.count < settings.batch
        if page.trimmed {
            stats.reloadsTrimmed += 1
            if send(sub, .reload(after: position, through: page.head)) { sub.position = page.head }
        } else {
            let through = complete ? max(page.head, position) : (page.entries.last?.sequence ?? position)
            guard send(sub, .rows(page.entries, after: position, through: through, head: page.head), rows: page.entries.count) else { return }
            sub.position = through
            if complete && windows[sub.host] == nil {
                // The first subscriber of the host here: its read is the window. Rows committed
                // since are read at once (their NOTIFY may have come before the window existed).
                windows[sub.host] = Window(from: position, rows: page.entries, head: through)
                dirty.insert(sub.host)
                condition.signal()
            }
        }
        if !serveFromWindow(sub) {
            catchUps.append(sub)
            condition.signal()
        }
    }
}
