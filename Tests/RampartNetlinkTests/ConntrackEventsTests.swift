import CNetfilter
import Foundation
import Testing
import RampartTestSupport
@testable import RampartNetlink

/// `ConntrackEvents` over the scripted transport: no socket, no root.
@Suite("conntrack events (scripted kernel, no root)") struct ConntrackEventsTests {
    static let a = ConntrackMessageTests.v4
    static let b = ConntrackReplyTests.b

    /// A NEW event as the kernel multicasts it (type IPCTNL_MSG_CT_NEW, NLM_F_CREATE|NLM_F_EXCL,
    /// sequence 0); the create message carries the same attributes.
    static func new(_ e: ConntrackEntry) -> [UInt8] {
        ConntrackMessageTests.build { ConntrackMessages.buildCreate(into: $0, sequence: 0, entry: e, timeout: 60) }
    }
    /// An UPDATE event: the same message type without CREATE|EXCL.
    static func update(_ e: ConntrackEntry) -> [UInt8] {
        var m = new(e)
        let flags = UInt16(NLM_F_REQUEST)
        m[6] = UInt8(flags & 0xff); m[7] = UInt8(flags >> 8)
        return m
    }
    /// A DESTROY event (IPCTNL_MSG_CT_DELETE with the tuple, zone and id).
    static func destroy(_ e: ConntrackEntry) -> [UInt8] {
        ConntrackMessageTests.build { ConntrackMessages.buildDelete(into: $0, sequence: 0, entry: e) }
    }

    /// Catches: NEW, UPDATE and DESTROY told apart wrongly, an entry's tuple or id lost in
    /// parsing, a signal failing the receive, ENOBUFS swallowed (or thrown as a plain error
    /// instead of "events were lost"), the events queued after the overflow not delivered.
    @Test func eventsAreParsedAndLossesReported() throws {
        let kernel = ScriptedNetlinkTransport()
        kernel.enqueue([NetlinkReply.datagram([Self.new(Self.a), Self.destroy(Self.a), Self.update(Self.b)]),
                        .failure(.EINTR), .failure(.ENOBUFS),
                        NetlinkReply.datagram([Self.new(Self.b), NetlinkReply.error(seq: 5, errno: 0)])])
        let events = ConntrackEvents(transport: kernel)
        var got: [ConntrackEvent] = []
        #expect(try events.receive { got.append($0) } == .events(3))
        #expect(got.map(\.kind) == [.new, .destroy, .update])
        #expect(got[0].entry.original == Self.a.original && got[0].entry.zone == 7 && got[0].entry.reply == Self.a.original.inverted)
        #expect(got[1].entry.id == Self.a.id && got[2].entry.original == Self.b.original)
        #expect(try events.receive { got.append($0) } == .eventsLost)
        // What was queued after the overflow is intact; an ack (not an event) is skipped.
        #expect(try events.receive { got.append($0) } == .events(1))
        #expect(got.last?.kind == .new && got.last?.entry.original == Self.b.original)
        #expect(try events.receive { _ in } == .nothing)
    }

    /// Catches: a drain that runs past a loss (reporting the events after it as if nothing was
    /// missed) or that stops before the queue is empty.
    @Test func drainStopsAtALoss() throws {
        let kernel = ScriptedNetlinkTransport()
        kernel.enqueue([NetlinkReply.datagram([Self.new(Self.a)]), NetlinkReply.datagram([Self.new(Self.b)]),
                        .failure(.ENOBUFS), NetlinkReply.datagram([Self.destroy(Self.a)])])
        let events = ConntrackEvents(transport: kernel)
        var n = 0
        #expect(try events.drain { _ in n += 1 } == .eventsLost)
        #expect(n == 2)
        #expect(try events.drain { _ in n += 1 } == .events(1))
        #expect(kernel.queued.isEmpty)
    }
}
