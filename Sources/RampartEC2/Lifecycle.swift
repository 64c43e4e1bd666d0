import Foundation
import RampartCore
import RampartStore

/// StopInstances, StartInstances, RebootInstances, TerminateInstances: an instance's state and
/// AWS's transitions between them. Rampart runs no VM: a state is a record for the operator's
/// compute, and only termination changes enforcement (the record goes, the hypervisor unplugs
/// the instance). A stopped instance keeps its record, address and groups, as AWS keeps its
/// network interface; a terminated one stays listed for `EC2Settings.terminatedVisibleSeconds`.
extension EC2Service {
    /// A lifecycle action.
    enum Transition: Equatable {
        case stop, start, reboot, terminate

        /// The state after the action from `state`, or nil when AWS refuses it
        /// (`IncorrectInstanceState`). Repeating a stop, start or terminate changes nothing
        /// and succeeds, as AWS.
        func next(from state: EC2InstanceState) -> EC2InstanceState? {
            switch (self, state) {
            case (.stop, .running), (.stop, .stopped): .stopped
            case (.start, .stopped), (.start, .running), (.reboot, .running): .running
            case (.terminate, _): .terminated
            case (.stop, .terminated), (.start, .terminated), (.reboot, .stopped), (.reboot, .terminated): nil
            }
        }

        var verb: String {
            switch self {
            case .stop: "stopped"
            case .start: "started"
            case .reboot: "rebooted"
            case .terminate: "terminated"
            }
        }
    }

    /// AWS's numeric state codes.
    static func code(_ s: EC2InstanceState) -> Int {
        switch s {
        case .running: 16
        case .terminated: 48
        case .stopped: 80
        }
    }

    static func malformedInstanceID(_ id: String) -> EC2Error { EC2Error("InvalidInstanceID.Malformed", "Invalid id: \"\(id)\"") }

    static func instanceNotFound(_ id: String) -> EC2Error {
        EC2Error("InvalidInstanceID.NotFound", "The instance ID '\(id)' does not exist")
    }

    /// The oldest termination time still listed, now.
    var terminatedCutoff: Int64 { Int64(Date().timeIntervalSince1970) - Int64(settings.terminatedVisibleSeconds) }

    /// The caller's instance `id`, live or terminated within the visible period.
    func lookup(_ tx: EC2Transaction, _ caller: Caller, _ id: String) throws -> EC2Instance {
        if let live = try tx.instances(account: caller.account, region: caller.region, id: id).first { return live }
        if let gone = try tx.terminatedInstances(account: caller.account, region: caller.region, since: terminatedCutoff, id: id).first {
            return gone
        }
        throw Self.instanceNotFound(id)
    }

    func transition(_ form: Form, _ caller: Caller, _ t: Transition) throws(EC2Error) -> (inout XMLWriter) -> Void {
        let ids = try form.strings("InstanceId")
        if ids.isEmpty { throw .missing("InstanceId.1") }
        let dryRun = try form.bool("DryRun")
        switch t {
        case .stop:
            // Nothing runs here to shut down: forcing or skipping the OS shutdown is the same stop.
            _ = try form.bool("Force")
            _ = try form.bool("SkipOsShutdown")
            if try form.bool("Hibernate") { throw EC2Error("UnsupportedOperation", "Hibernation is not supported by this server") }
        case .start:
            _ = form.string("AdditionalInfo")  // AWS: "Reserved."
        case .reboot, .terminate:
            break
        }
        try finish(form)
        for id in ids where !Self.isID(id, "i") { throw Self.malformedInstanceID(id) }
        var unique: [String] = []
        for id in ids where !unique.contains(id) { unique.append(id) }
        let changes: [(id: String, before: EC2InstanceState, after: EC2InstanceState)] = try change(dryRun, caller) { tx, _ throws(EC2Error) in
            try Self.storeCall {
                let now = Int64(Date().timeIntervalSince1970)
                var out: [(id: String, before: EC2InstanceState, after: EC2InstanceState)] = []
                var deliveries = Set<Delivery>()
                for id in unique {
                    let i = try lookup(tx, caller, id)
                    guard let next = t.next(from: i.state) else {
                        throw EC2Error("IncorrectInstanceState", "The instance '\(id)' is not in a state from which it can be \(t.verb) (it is \(i.state.rawValue))")
                    }
                    if next == .terminated && i.state != .terminated {
                        deliveries.formUnion(try tx.terminateInstance(i, at: now))
                    } else if next != i.state {
                        try tx.setState(id, next)
                    }
                    out.append((id, i.state, next))
                }
                if t == .terminate { try tx.purgeTerminated(before: terminatedCutoff) }
                return (out, deliveries.sorted())
            }
        }
        try realize(t, changes.map { ($0.id, $0.after) }, caller)  // after COMMIT: --compute follows (Compute.swift)
        return { w in
            if t == .reboot { return w.leaf("return", true) }
            w.list("instancesSet", changes) { w, c in
                w.leaf("instanceId", c.id)
                w.element("currentState") { w in
                    w.leaf("code", Self.code(c.after))
                    w.leaf("name", c.after.rawValue)
                }
                w.element("previousState") { w in
                    w.leaf("code", Self.code(c.before))
                    w.leaf("name", c.before.rawValue)
                }
            }
        }
    }
}
