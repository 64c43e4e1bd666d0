import Foundation
import RampartCore

/// AWS's view of the contract's rules: `IpPermissions` (a protocol, a port range or ICMP
/// type/code, and lists of CIDRs and groups) map to one contract rule per CIDR or group, and back.
enum Permissions {
    /// One rule parsed from a request, before it has an id.
    struct Parsed: Equatable {
        var rule: Rule
        var description: String?
    }

    /// `IpProtocol`: tcp, udp, icmp, icmpv6, -1 (or all), or a number 1-255.
    static func parseProtocol(_ text: String) throws(EC2Error) -> RuleProtocol {
        let t = text.lowercased()
        switch t {
        case "-1", "all": return .any
        case "tcp": return .tcp
        case "udp": return .udp
        case "icmp": return .icmp
        case "icmpv6": return .icmpv6
        default:
            if !t.isEmpty, t.count <= 3, t.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(t), (1...255).contains(n) {
                return .number(UInt8(n))
            }
            if t == "0" { throw .invalidParameter("Invalid value '0' for IP protocol: protocol 0 is not supported; use -1 for all protocols") }
            throw .invalidParameter("Invalid value '\(text)' for IP protocol. Unknown protocol.")
        }
    }

    /// The protocol as AWS names it.
    static func protocolName(_ p: RuleProtocol) -> String {
        switch p {
        case .any: "-1"
        case .number(6): "tcp"
        case .number(17): "udp"
        case .number(1): "icmp"
        case .number(58): "icmpv6"
        case .number(let n): String(n)
        }
    }

    /// FromPort/ToPort as AWS shows them for a rule (nil: not shown).
    static func ports(_ r: Rule) -> (from: Int?, to: Int?) {
        switch r.proto {
        case .tcp, .udp:
            guard let p = r.ports else { return (0, 65535) }
            return (Int(p.lowerBound), Int(p.upperBound))
        case .icmp, .icmpv6:
            return (r.icmpType.map(Int.init) ?? -1, r.icmpCode.map(Int.init) ?? -1)
        default:
            return (nil, nil)
        }
    }

    /// The ports or ICMP type/code of a permission, applied to `rule`.
    static func applyPorts(_ rule: inout Rule, from: Int?, to: Int?, at path: String) throws(EC2Error) {
        switch rule.proto {
        case .tcp, .udp:
            guard let from else { throw .missing("\(path).FromPort") }
            guard let to else { throw .missing("\(path).ToPort") }
            guard (0...65535).contains(from), (0...65535).contains(to), from <= to else {
                throw .invalidParameter("Invalid value for portRange. Must specify both from and to ports with TCP/UDP (0-65535, from <= to); got \(from)-\(to)")
            }
            if from == 0 && to == 65535 { rule.ports = nil; return }
            if from == 0 { throw .invalidParameter("Invalid value for portRange: port 0 is only accepted as 0-65535 (all ports)") }
            rule.ports = UInt16(from)...UInt16(to)
        case .icmp, .icmpv6:
            let type = from ?? -1, code = to ?? -1
            guard (-1...255).contains(type) else { throw .invalidParameter("Invalid value '\(type)' for ICMP type (FromPort): -1 or 0-255") }
            guard (-1...255).contains(code) else { throw .invalidParameter("Invalid value '\(code)' for ICMP code (ToPort): -1 or 0-255") }
            if type == -1 && code != -1 { throw .invalidParameter("ICMP code (ToPort) \(code) needs an ICMP type (FromPort)") }
            rule.icmpType = type == -1 ? nil : UInt8(type)
            rule.icmpCode = code == -1 ? nil : UInt8(code)
        default:
            // As AWS: any other protocol allows every port, whatever is given.
            break
        }
    }

    static func parseCIDR(_ text: String, family: IPFamily, name: String) throws(EC2Error) -> IPPrefix {
        guard text.contains("/") else { throw .invalidParameter("CIDR block \(text) is malformed (\(name) needs ADDRESS/LENGTH)") }
        switch IPPrefix.parse(text) {
        case .ok(let p):
            guard p.family == family else {
                throw .invalidParameter("CIDR block \(text) is malformed: \(name) takes an \(family == .ipv4 ? "IPv4" : "IPv6") prefix")
            }
            return p
        case .invalid(let why):
            throw .invalidParameter("CIDR block \(text) is malformed: \(why)")
        }
    }

    static func description(_ form: Form, _ name: String) throws(EC2Error) -> String? {
        guard let d = form.string(name) else { return nil }
        guard d.unicodeScalars.count <= 255 else { throw .invalidParameter("\(name): a description has at most 255 characters") }
        return d
    }

    /// The rules of `IpPermissions.N` in `direction`, with each referenced group id as given
    /// (`resolve` checks it and may return it normalized).
    static func parse(_ form: Form, direction: Direction, resolve: (String) throws(EC2Error) -> String) throws(EC2Error) -> [Parsed] {
        var out: [Parsed] = []
        for i in try form.indices("IpPermissions") {
            let p = "IpPermissions.\(i)"
            let proto = try parseProtocol(try form.required("\(p).IpProtocol"))
            var base = Rule(direction: direction, proto: proto, remote: .group(""))
            try applyPorts(&base, from: try form.int("\(p).FromPort"), to: try form.int("\(p).ToPort"), at: p)
            var sources: [Parsed] = []
            for j in try form.indices("\(p).IpRanges") {
                var r = base
                r.remote = .cidr(try parseCIDR(try form.required("\(p).IpRanges.\(j).CidrIp"), family: .ipv4, name: "CidrIp"))
                sources.append(Parsed(rule: r, description: try description(form, "\(p).IpRanges.\(j).Description")))
            }
            for j in try form.indices("\(p).Ipv6Ranges") {
                var r = base
                r.remote = .cidr(try parseCIDR(try form.required("\(p).Ipv6Ranges.\(j).CidrIpv6"), family: .ipv6, name: "CidrIpv6"))
                sources.append(Parsed(rule: r, description: try description(form, "\(p).Ipv6Ranges.\(j).Description")))
            }
            for j in try form.indices("\(p).Groups") {
                let g = "\(p).Groups.\(j)"
                if form.string("\(g).GroupName") != nil { throw .invalidParameter("\(g).GroupName: name the group by GroupId") }
                guard let id = form.string("\(g).GroupId") else { throw .missing("\(g).GroupId") }
                _ = form.string("\(g).UserId")
                var r = base
                r.remote = .group(try resolve(id))
                sources.append(Parsed(rule: r, description: try description(form, "\(g).Description")))
            }
            if sources.isEmpty { throw .missing("\(p).IpRanges, \(p).Ipv6Ranges or \(p).Groups") }
            for s in sources {
                let issues = Validate.rule(s.rule, at: p)
                if !issues.isEmpty { throw .invalidParameter(issues.map(\.description).joined(separator: "; ")) }
            }
            out += sources
        }
        return out
    }

    /// A `SecurityGroupRuleRequest` (ModifySecurityGroupRules) under `prefix`: `IpProtocol`,
    /// `FromPort`/`ToPort`, exactly one of `CidrIpv4`, `CidrIpv6`, `ReferencedGroupId`, and an
    /// optional `Description`. The rule is built in `direction` (the rule it replaces keeps its own).
    static func parseRuleRequest(_ form: Form, _ prefix: String, direction: Direction,
                                 resolve: (String) throws(EC2Error) -> String) throws(EC2Error) -> Parsed {
        let proto = try parseProtocol(try form.required("\(prefix).IpProtocol"))
        var rule = Rule(direction: direction, proto: proto, remote: .group(""))
        try applyPorts(&rule, from: try form.int("\(prefix).FromPort"), to: try form.int("\(prefix).ToPort"), at: prefix)
        let v4 = form.string("\(prefix).CidrIpv4"), v6 = form.string("\(prefix).CidrIpv6")
        let group = form.string("\(prefix).ReferencedGroupId"), prefixList = form.string("\(prefix).PrefixListId")
        let given = [v4, v6, group, prefixList].compactMap { $0 }.count
        if given == 0 { throw .missing("\(prefix).CidrIpv4, CidrIpv6 or ReferencedGroupId") }
        if given > 1 {
            throw EC2Error("InvalidParameterCombination", "\(prefix): give exactly one of CidrIpv4, CidrIpv6, ReferencedGroupId, PrefixListId")
        }
        if prefixList != nil { throw EC2Error("UnsupportedOperation", "\(prefix).PrefixListId: prefix lists are not supported by this server") }
        if let v4 { rule.remote = .cidr(try parseCIDR(v4, family: .ipv4, name: "CidrIpv4")) }
        if let v6 { rule.remote = .cidr(try parseCIDR(v6, family: .ipv6, name: "CidrIpv6")) }
        if let group { rule.remote = .group(try resolve(group)) }
        let issues = Validate.rule(rule, at: prefix)
        if !issues.isEmpty { throw .invalidParameter(issues.map(\.description).joined(separator: "; ")) }
        return Parsed(rule: rule, description: try description(form, "\(prefix).Description"))
    }

    /// A rule as AWS's error messages describe it.
    static func text(_ r: Rule) -> String {
        let peer: String
        switch r.remote {
        case .cidr(let c): peer = c.description
        case .group(let g): peer = g
        }
        let (from, to) = ports(r)
        return "peer: \(peer), \(protocolName(r.proto).uppercased()), from port: \(from.map(String.init) ?? "ALL"), to port: \(to.map(String.init) ?? "ALL"), ALLOW"
    }

    /// A rule without its id (what duplicates are judged on).
    static func bare(_ r: Rule) -> Rule {
        var b = r
        b.id = nil
        return b
    }
}
