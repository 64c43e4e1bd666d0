import Foundation
import RampartCore
import RampartStore

/// The compute behind rampart-api (`--compute`): what makes an instance exist once its record
/// is committed. The API asks it where instances may go before the transaction (a refusal
/// changes nothing), and tells it after COMMIT what was launched, stopped, started or
/// terminated. Calls are made one at a time per request, after the deliveries to the daemons,
/// so a hypervisor enforces an instance's groups before its device exists and unplugs it
/// before the device goes.
public protocol InstanceCompute: Sendable {
    /// Nil when instances can be placed on registered host `host`; otherwise why not, in words
    /// for the client.
    func refusal(host: String) -> String?
    /// Makes `instances` exist (a stopped one exists with its link down). Idempotent: what
    /// exists is left as it is, so a RunInstances repeated with its ClientToken repairs a launch
    /// that failed half-way. Terminated instances are skipped.
    func launch(_ instances: [EC2Instance]) throws
    /// Removes the machine of terminated instance `id`, if it has one (idempotent). `record`
    /// is what the instance was (its host and interface), when the store still has it.
    func terminate(_ id: String, record: Instance?) throws
    /// Stops (`running` false) or starts instance `id`'s machine (idempotent).
    func setRunning(_ id: String, _ running: Bool) throws
}

/// Orders the compute calls of concurrent requests after their commits: a launch reads its
/// instances' states under it, so that a terminate committed meanwhile is never followed by
/// the launch of what it removed.
private let computeOrder = NSLock()

extension EC2Service {
    /// The registered hosts instances may be placed on: with a compute, those it serves. A host
    /// asked for by `Placement.HostId` that is registered but not served is refused here, in
    /// the transaction, so nothing is stored.
    func placeable(_ loads: [(host: String, instances: Int)], requested: String?) throws(EC2Error) -> [(host: String, instances: Int)] {
        guard let compute else { return loads }
        if let requested, loads.contains(where: { $0.host == requested }), let why = compute.refusal(host: requested) {
            throw EC2Error("InsufficientInstanceCapacity", "The host '\(requested)' cannot run instances here: \(why)")
        }
        let served = loads.filter { compute.refusal(host: $0.host) == nil }
        if requested == nil, served.isEmpty, let first = loads.first {
            throw EC2Error("InsufficientInstanceCapacity", "No registered hypervisor can run instances here (\(first.host): \(compute.refusal(host: first.host) ?? "?"))")
        }
        return served
    }

    /// After RunInstances committed: the compute creates the instances. If it fails, a second
    /// transaction terminates the call's instances (their records go, the hypervisors unplug
    /// them, the compute removes what it made) and the call answers 500 naming them, so the
    /// store never lists an instance as running that does not exist: as AWS, whose failed
    /// launch ends in `terminated`.
    func realize(_ instances: [EC2Instance], _ caller: Caller) throws(EC2Error) {
        guard let compute, !instances.isEmpty else { return }
        computeOrder.lock()
        defer { computeOrder.unlock() }
        // Their states now: a stop or terminate that committed since (another request) has had
        // its compute call already, and must not be undone by this launch.
        let ids = instances.map(\.id)
        let current = (try? read(caller) { tx, _ throws(EC2Error) in try Self.storeCall { try ids.map { try lookup(tx, caller, $0) } } }) ?? instances
        do {
            try compute.launch(current)
        } catch {
            let live = current.filter { $0.state != .terminated }.map(\.id)
            let undone: String
            do {
                let _: Int = try change(false, caller) { tx, _ throws(EC2Error) in
                    try Self.storeCall {
                        let now = Int64(Date().timeIntervalSince1970)
                        var deliveries = Set<Delivery>()
                        for id in live {
                            let i = try lookup(tx, caller, id)
                            if i.state != .terminated { deliveries.formUnion(try tx.terminateInstance(i, at: now)) }
                        }
                        return (0, deliveries.sorted())
                    }
                }
                for i in current where live.contains(i.id) { try? compute.terminate(i.id, record: i.record) }
                undone = "they were terminated"
            } catch let e {
                undone = "terminating them failed too (\(e)): terminate them"
            }
            throw .server("The compute could not create \(live.joined(separator: ", ")): \(error); \(undone)")
        }
    }

    /// After a lifecycle action committed: the compute follows each instance's new state (a
    /// reboot changes nothing). A failure answers 500 saying what the store holds: the state
    /// change stays committed, and repeating the call (idempotent) retries the compute.
    func realize(_ t: Transition, _ changes: [(id: String, after: EC2InstanceState)], _ caller: Caller) throws(EC2Error) {
        guard let compute, t != .reboot else { return }
        computeOrder.lock()
        defer { computeOrder.unlock() }
        for c in changes {
            do {
                switch c.after {
                case .terminated:
                    // The snapshot names its hypervisor and interface; the id alone still lets the
                    // compute find the machine if the snapshot is already gone.
                    let since = Int64.min
                    let gone = try read(caller) { tx, _ throws(EC2Error) in
                        try Self.storeCall { try tx.terminatedInstances(account: caller.account, region: caller.region, since: since, id: c.id).first }
                    }
                    try compute.terminate(c.id, record: gone?.record)
                case .stopped: try compute.setRunning(c.id, false)
                case .running: try compute.setRunning(c.id, true)
                }
            } catch {
                throw .server("The instance '\(c.id)' is \(c.after.rawValue) in the store, but the compute failed: \(error). Repeat the call to retry")
            }
        }
    }
}
