import Foundation
import Testing
@testable import RampartCore

/// The evaluator on the spec's example: the verdicts the kernel layout gives, and the rule that
/// gave each (contract rules 1–9).
@Suite struct EvaluateTests {
    let ir: RulesetIR
    init() throws {
        var d = try twoTier()
        d.guardedPrefixes = ["tap"]
        ir = Compiler.compile(d)
    }

    func a(_ s: String) -> IPAddress { IPAddress(s)! }

    func tcp(_ from: String?, _ to: String?, _ src: String, _ dst: String, _ port: UInt16, state: CTStates = .new, flags: UInt8 = 0x02) -> PolicyVerdict {
        Evaluate.packet(PacketDescription(from: from, to: to, source: a(src), destination: a(dst), protocolNumber: 6,
                                          sourcePort: 40000, destinationPort: port, connectionState: state, tcpFlags: flags), in: ir)
    }

    @Test func groupRulesAllowAndTheirPathIsNamed() {
        let http = tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 80)
        #expect(http.allowed)
        #expect(http.allowingRules == ["web/http"])
        #expect(http.trace.map(\.chain) == ["ingress", "in-web-1", "gin-web"])
        // ssh only from admin members (bastion is one, on another host).
        #expect(tcp("uplink", "tapweb1", "10.0.9.5", "10.0.1.11", 22).allowingRules == ["web/ssh-from-admin"])
        let denied = tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 22)
        #expect(!denied.allowed)
        #expect(denied.droppedBy?.chain == "in-web-1")
        #expect(denied.droppedBy?.text == "drop")
    }

    /// Same host: the sender's egress, then the receiver's ingress (rule 7).
    @Test func sameHostPassesBothSides() {
        let v = tcp("tapweb1", "tapdb1", "10.0.1.11", "10.0.2.21", 5432)
        #expect(v.allowed)
        #expect(v.allowingRules == ["web/out", "db/pg-from-web"])
        // db may send only DNS: its egress stops it before web's ingress is asked.
        let back = tcp("tapdb1", "tapweb1", "10.0.2.21", "10.0.1.11", 80)
        #expect(!back.allowed)
        #expect(back.droppedBy?.chain == "out-db-1")
    }

    /// Rule 4: a spoofed source is dropped first, even as part of another's established flow.
    @Test func antiSpoofingComesFirst() {
        let ride = tcp("tapweb2", "uplink", "10.0.1.11", "192.0.2.10", 80, state: .established, flags: 0x10)
        #expect(!ride.allowed)
        // On the prerouting hook, before conntrack could take it for the established flow.
        #expect(ride.droppedBy?.chain == Naming.preroutingChain)
        #expect(ride.droppedBy?.text == "meta nfproto ipv4 iifname . ip saddr != @inst-src4 drop")
        #expect(tcp("tapweb1", "uplink", "10.0.1.11", "192.0.2.10", 80, state: .established, flags: 0x10).allowed)
        var wrongMAC = PacketDescription(from: "tapweb1", to: "uplink", source: a("10.0.1.11"), destination: a("192.0.2.10"), protocolNumber: 6,
                                         destinationPort: 80, connectionState: .established, tcpFlags: 0x10)
        wrongMAC.sourceMAC = MACAddress("02:00:00:00:09:99")
        #expect(Evaluate.packet(wrongMAC, in: ir).droppedBy?.text.contains("ether saddr != @inst-macs") == true)
    }

    /// Rule 1: a new TCP connection begins with a SYN.
    @Test func midStreamPacketsDoNotOpenConnections() {
        let ack = tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 80, flags: 0x10)
        #expect(!ack.allowed)
        #expect(ack.droppedBy?.text.contains("tcp flags & (fin|syn|rst|ack) != syn") == true)
        #expect(tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 80, state: .established, flags: 0x10).allowed)
    }

    /// Rule 5: DHCP and NDP only between an instance and its host.
    @Test func linkProtocolsStayOnTheLink() {
        func udp(_ from: String?, _ to: String?, _ src: String, _ dst: String, _ sport: UInt16, _ dport: UInt16) -> PolicyVerdict {
            Evaluate.packet(PacketDescription(from: from, to: to, source: a(src), destination: a(dst), protocolNumber: 17,
                                              sourcePort: sport, destinationPort: dport), in: ir)
        }
        #expect(udp("tapweb2", nil, "0.0.0.0", "255.255.255.255", 68, 67).allowed)          // discover to the host
        #expect(udp("tapweb2", nil, "10.0.1.12", "10.255.0.1", 68, 67).allowed)             // renew from its own address
        #expect(!udp("tapweb2", nil, "10.0.1.11", "10.255.0.1", 68, 67).allowed)            // another's address
        #expect(!udp("tapweb2", "uplink", "10.0.1.12", "10.0.0.2", 68, 67).allowed)        // never forwarded
        #expect(!udp("uplink", "tapweb2", "10.0.0.2", "10.0.1.12", 67, 68).allowed)        // rogue offer from afar
        #expect(udp(nil, "tapweb2", "10.255.0.1", "10.0.1.12", 67, 68).allowed)             // the host's reply
        #expect(!udp("tapweb2", nil, "10.0.1.12", "10.255.0.1", 67, 68).allowed)           // a DHCP server instance

        func icmp6(_ from: String?, _ to: String?, _ src: String, _ dst: String, type: UInt8, hop: UInt8 = 255, target: String? = nil) -> Bool {
            Evaluate.packet(PacketDescription(from: from, to: to, source: a(src), destination: a(dst), protocolNumber: 58, icmpType: type,
                                              hopLimit: hop, neighbourTarget: target.flatMap(IPv6Address.init)), in: ir).allowed
        }
        #expect(icmp6("tapweb1", nil, "fe80::11", "ff02::1:ff00:1", type: 135))                  // NS from link-local
        #expect(icmp6("tapweb1", nil, "::", "ff02::1:ff00:11", type: 135))                       // DAD
        #expect(icmp6("tapweb1", nil, "fd00::11", "fe80::1", type: 135))                         // from its own address
        #expect(!icmp6("tapweb1", nil, "fd00::12", "fe80::1", type: 135))                        // spoofed global source
        #expect(!icmp6("tapweb1", nil, "fe80::11", "ff02::1:ff00:1", type: 135, hop: 64))        // hop limit
        #expect(!icmp6("tapweb1", nil, "fe80::11", "ff02::1", type: 134))                        // RA from an instance
        #expect(!icmp6("tapweb1", nil, "fe80::11", "fe80::1", type: 137))                        // redirect
        #expect(icmp6("tapweb1", nil, "fe80::11", "fe80::1", type: 136, target: "fd00::11"))     // NA for its own address
        #expect(icmp6("tapweb1", nil, "fe80::11", "fe80::1", type: 136, target: "fe80::11"))     // NA for a link-local one
        #expect(!icmp6("tapweb1", nil, "fe80::11", "fe80::1", type: 136, target: "fd00::95"))    // NA for another's address
        #expect(!icmp6("tapweb1", "uplink", "fd00::11", "fd00::95", type: 135))                  // NDP never forwarded
        #expect(icmp6(nil, "tapweb1", "fe80::1", "fe80::11", type: 134))                         // the host's RA
        #expect(!icmp6(nil, "tapweb1", "fe80::1", "fe80::11", type: 134, hop: 254))
    }

    /// Conntrack's view as the kernel gives it, found with the kernel property
    /// (EvaluatorAgreesWithKernelTests): neighbour discovery (133–136) is untracked, so no
    /// `ct state` term matches it (an empty state set) and the link rules alone decide; a redirect,
    /// an echo reply or an RST with no entry is invalid; a bare ACK with no entry is new
    /// (`nf_conntrack_tcp_loose`) and meets the initial-SYN rule.
    @Test func conntrackStatesAsTheKernelGivesThem() {
        func icmp6(_ src: String, type: UInt8, hop: UInt8 = 255, target: String? = nil, state: CTStates) -> PolicyVerdict {
            Evaluate.packet(PacketDescription(from: "tapweb1", to: nil, source: a(src), destination: a("fe80::1"), protocolNumber: 58, icmpType: type,
                                              icmpCode: 0, connectionState: state, tcpFlags: 0, hopLimit: hop,
                                              neighbourTarget: target.flatMap(IPv6Address.init)), in: ir)
        }
        #expect(icmp6("fe80::a:1", type: 135, target: "fe80::1", state: []).allowed)
        #expect(icmp6("::", type: 135, target: "fe80::1", state: []).allowed)
        #expect(icmp6("fe80::a:1", type: 136, target: "fd00::11", state: []).allowed)
        #expect(icmp6("fd00::11", type: 136, target: "fd00::11", state: []).allowed)
        #expect(!icmp6("fe80::a:1", type: 136, target: "fd00::95", state: []).allowed)
        #expect(!icmp6("fe80::a:1", type: 135, hop: 64, target: "fe80::1", state: []).allowed)
        #expect(!icmp6("fe80::a:1", type: 134, state: []).allowed)
        #expect(!icmp6("fe80::a:1", type: 137, target: "fd00::11", state: .invalid).allowed)
        // Untracked, from its own address, and no link rule takes it (MLD): no `ct state` rule
        // matches either, so it goes to the instance's egress rules like a new packet would.
        let mld = icmp6("fd00::11", type: 143, state: [])
        #expect(mld.allowed == icmp6("fd00::11", type: 143, state: .new).allowed)
        #expect(mld.trace.allSatisfy { !$0.text.contains("ct state") })

        let reply = Evaluate.packet(PacketDescription(from: "uplink", to: "tapweb1", source: a("10.0.9.5"), destination: a("10.0.1.11"),
                                                      protocolNumber: 1, icmpType: 0, icmpCode: 0, connectionState: .invalid, tcpFlags: 0), in: ir)
        #expect(!reply.allowed)
        #expect(reply.reason(in: ir) == "dropped: conntrack marks the packet invalid")
        #expect(!tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 80, state: .invalid, flags: 0x04).allowed)
        let ack = tcp("uplink", "tapweb1", "192.0.2.10", "10.0.1.11", 80, state: .new, flags: 0x10)
        #expect(ack.droppedBy?.text.contains("tcp flags & (fin|syn|rst|ack) != syn") == true)
    }

    /// Rule 9: a guarded device of no instance passes nothing, established included; other
    /// devices are not touched.
    @Test func guardedDevices() {
        let stray = tcp("uplink", "tapstray", "192.0.2.10", "10.0.1.50", 80, state: .established, flags: 0x10)
        #expect(!stray.allowed)
        #expect(stray.droppedBy?.text == #"oifname "tap*" drop"#)
        #expect(!tcp("tapstray", nil, "10.0.1.50", "10.255.0.1", 22, state: .established, flags: 0x10).allowed)
        #expect(tcp("uplink", "eth9", "192.0.2.10", "10.9.9.9", 22).allowed)
        #expect(tcp("uplink", "eth9", "192.0.2.10", "10.9.9.9", 22).trace.isEmpty)
    }
}
