import Foundation
import RampartCore
import RampartDaemon
import RampartStore
import Testing

/// The refresh queue on its own (a value: no lock, no thread, no kernel).
@Suite("RefreshQueue") struct RefreshQueueTests {
    /// Collects the outcomes replies receive.
    final class Answers: @unchecked Sendable {
        private let lock = NSLock()
        private var got: [String: SyncOutcome] = [:]
        func reply(_ name: String) -> RefreshQueue.Reply { { o in self.lock.withLock { self.got[name] = o } } }
        subscript(_ name: String) -> SyncOutcome? { lock.withLock { got[name] } }
        var count: Int { lock.withLock { got.count } }
    }

    static func answer(_ replies: [(RefreshQueue.Reply, SyncOutcome)]) { for (r, o) in replies { r(o) } }

    @Test func repeatedRefreshesCoalesceButEachGetsATicket() {
        var q = RefreshQueue()
        let tickets = (0..<1000).map { i in q.enqueue(i % 2 == 0 ? .members("admin") : .rules("web")) }
        #expect(tickets == Array(1...1000))
        #expect(q.pending == [.members("admin"), .rules("web")])
        let work = q.take()
        #expect(work.items.count == 2 && work.covered == 1000 && !work.resync)
        #expect(q.pending.isEmpty && !q.hasWork)
    }

    /// A pass carries the read-ahead of its refreshes only if every one of them came with one:
    /// an answer read before a call without one (the socket API's) may be older than the change
    /// that call announces. Two read-aheads in one pass merge, the later's answers winning.
    @Test func aPassCarriesItsReadAheadOnlyIfEveryRefreshCameWithOne() {
        let older = ReadAhead(groups: ["web": Group(description: "old")], members: ["db": [:]])
        let newer = ReadAhead(groups: ["web": Group(description: "new"), "gone": Group?.none])
        var q = RefreshQueue()
        _ = q.offer(.rules("web"), readAhead: older)
        _ = q.offer(.members("db"), readAhead: older)
        _ = q.offer(.rules("gone"), readAhead: newer)
        var merged = older
        merged.merge(newer)
        #expect(q.take().readAhead == merged && merged.groups["web"] == Group(description: "new") && merged.members["db"] == [:])
        // One refresh without: the pass reads the store, whatever came after it.
        _ = q.offer(.rules("web"), readAhead: older)
        _ = q.offer(.members("admin"))
        _ = q.offer(.members("db"), readAhead: older)
        #expect(q.take().readAhead == nil)
        _ = q.enqueue(.rules("web"))
        #expect(q.take().readAhead == nil)
        // Each pass starts afresh.
        _ = q.offer(.rules("web"), readAhead: newer)
        #expect(q.take().readAhead == newer)
        #expect(q.take().readAhead == nil)
    }

    @Test func theCapRefusesOnlyNewRefreshes() {
        var q = RefreshQueue(capacity: 2)
        #expect(q.offer(.instance("a")).0 == .queued(1))
        #expect(q.offer(.instance("b")).0 == .queued(2))
        #expect(q.offer(.instance("c")).0 == .full)
        #expect(q.offer(.instance("a")).0 == .queued(3))  // already waiting: coalesces
        _ = q.take()
        #expect(q.offer(.instance("c")).0 == .queued(4))  // room again after a pass took them
    }

    @Test func waitersGetTheOutcomeOfThePassThatCoveredThem() {
        var q = RefreshQueue()
        let answers = Answers()
        guard case (.queued(let t1), .none) = q.offer(.members("admin"), reply: answers.reply("first")) else { Issue.record("refused"); return }
        let work = q.take()
        // arrives during the pass: not covered by it
        _ = q.offer(.members("web"), reply: answers.reply("second"))
        Self.answer(q.finish(through: work.covered, refresh: .committed(generation: 7), resync: .committed(generation: 7)))
        #expect(answers["first"] == .committed(generation: 7))
        #expect(answers["second"] == nil)
        #expect(q.waiting == 1)
        let w2 = q.take()
        Self.answer(q.finish(through: w2.covered, refresh: .failed("kernel said no"), resync: .failed("kernel said no")))
        #expect(answers["second"] == .failed("kernel said no"))
        // a waiter that comes late gets its own pass's outcome, not the last one
        #expect(q.wait(for: t1, reply: answers.reply("late")) == .committed(generation: 7))
    }

    @Test func resyncTicketsGetTheResyncsOutcome() {
        var q = RefreshQueue()
        let answers = Answers()
        _ = q.offer(.members("admin"), reply: answers.reply("refresh"))
        let (rt, immediate) = q.requestResync(reply: answers.reply("resync"))
        #expect(immediate == nil && rt == 2)
        let work = q.take()
        #expect(work.resync && work.covered == 2)
        Self.answer(q.finish(through: work.covered, refresh: .committed(generation: 3), resync: .failed("read-back failed")))
        #expect(answers["refresh"] == .committed(generation: 3))
        #expect(answers["resync"] == .failed("read-back failed"))
        #expect(q.wait(for: rt, reply: answers.reply("late")) == .failed("read-back failed"))
        #expect(q.wait(for: 1, reply: answers.reply("late")) == .committed(generation: 3))
    }

    @Test func stoppingAnswersNewWaitersAtOnceAndReleasesTheOthers() {
        var q = RefreshQueue()
        let answers = Answers()
        _ = q.offer(.members("admin"), reply: answers.reply("queued"))
        q.stop()
        guard case (.queued, let immediate?) = q.offer(.members("web"), reply: answers.reply("after")) else { Issue.record("not answered"); return }
        #expect(immediate.1 == RefreshQueue.stoppingOutcome)
        #expect(q.wait(for: 1, reply: answers.reply("x")) == RefreshQueue.stoppingOutcome)
        let left = q.removeWaiters()
        #expect(left.count == 1)
        #expect(q.waiting == 0)
    }

    @Test func historyIsBounded() {
        var q = RefreshQueue()
        let answers = Answers()
        for i in 0..<(RefreshQueue.historyLength + 10) {
            _ = q.enqueue(.instance("i\(i)"))
            let w = q.take()
            _ = q.finish(through: w.covered, refresh: .committed(generation: UInt32(i)), resync: .committed(generation: UInt32(i)))
        }
        // ticket 1's pass is forgotten: the last outcome answers
        #expect(q.wait(for: 1, reply: answers.reply("old")) == .committed(generation: UInt32(RefreshQueue.historyLength + 9)))
        #expect(q.wait(for: 200, reply: answers.reply("recent")) == .committed(generation: 199))
    }
}
