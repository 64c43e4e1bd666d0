import CNetfilter
import Foundation
import Testing
import RampartTestSupport
@testable import RampartNetlink

/// `ConntrackConnection`'s reply handling over the scripted transport: no socket, no root.
@Suite("conntrack replies (scripted kernel, no root)") struct ConntrackReplyTests {
    static let a = ConntrackMessageTests.v4
    static let b = ConntrackEntry(original: ConntrackTuple(family: .ipv4, protocolNumber: 17, source: ConntrackAddress(ipv4: 0x0A00_0001),
                                                           destination: ConntrackAddress(ipv4: 0x0A00_0002), sourcePort: 5353, destinationPort: 53))

    /// A dump entry as the kernel sends it (a NEW message carries the same attributes).
    static func entry(_ e: ConntrackEntry, seq: UInt32) -> [UInt8] {
        ConntrackMessageTests.build { ConntrackMessages.buildCreate(into: $0, sequence: seq, entry: e, timeout: 60) }
    }

    /// Catches: entries of another request's dump passed on, a receive interrupted by a signal
    /// failing the dump, or a dump that ends before NLMSG_DONE.
    @Test func dumpSkipsStaleRepliesAndSurvivesEINTR() throws {
        let kernel = ScriptedNetlinkTransport { request in
            let seq = request.messages[0].seq
            return [.failure(.EINTR),
                    NetlinkReply.datagram([Self.entry(Self.b, seq: seq &- 1), Self.entry(Self.a, seq: seq)]),
                    NetlinkReply.datagram([Self.entry(Self.b, seq: seq), NetlinkReply.done(seq: seq)])]
        }
        let ct = ConntrackConnection(transport: kernel)
        let entries = try ct.entries(.all)
        #expect(entries.map(\.original) == [Self.a.original, Self.b.original])
        #expect(kernel.queued.isEmpty)
    }

    /// Catches: ENOENT (already gone) counted as a failure, or a refusal lost among the acks.
    @Test func deleteCountsGoneEntriesAndThrowsRefusals() throws {
        func kernel(_ errnos: [Int32]) -> ScriptedNetlinkTransport {
            ScriptedNetlinkTransport { request in
                [NetlinkReply.datagram(zip(request.messages, errnos).map { NetlinkReply.error(seq: $0.seq, errno: $1) })]
            }
        }
        let done = try ConntrackConnection(transport: kernel([0, ENOENT])).delete([Self.a, Self.b])
        #expect(done == ConntrackDeletion(deleted: 1, alreadyGone: 1))

        let error = #expect(throws: NetlinkError.self) { try ConntrackConnection(transport: kernel([EPERM, 0])).delete([Self.a, Self.b]) }
        #expect(error?.errno == .EPERM)
    }

    /// Catches: an ack asked per entry (a `recv` each), or a silent success not counted, or a
    /// refusal among the silent ones lost, across more than one datagram.
    @Test func deleteAsksOneAckPerDatagram() throws {
        let entries = (0..<1_000).map { i -> ConntrackEntry in
            var e = Self.b
            e.original.sourcePort = UInt16(10_000 + i)
            return e
        }
        var datagrams = 0, acksAsked = 0
        let kernel = ScriptedNetlinkTransport { request in
            datagrams += 1
            var out: [[UInt8]] = []
            for m in request.messages {
                let asked = m.flags & UInt16(NLM_F_ACK) != 0
                if asked { acksAsked += 1 }
                // As the kernel answers: an error always, a success only when asked.
                let errno: Int32 = m.seq % 7 == 0 ? ENOENT : 0
                if errno != 0 || asked { out.append(NetlinkReply.error(seq: m.seq, errno: errno)) }
            }
            return [NetlinkReply.datagram(out)]
        }
        let result = try ConntrackConnection(transport: kernel).delete(entries)
        #expect(datagrams > 1)
        #expect(acksAsked == datagrams)
        #expect(result.deleted + result.alreadyGone == 1_000 && result.alreadyGone > 100, "\(result)")
    }
}
