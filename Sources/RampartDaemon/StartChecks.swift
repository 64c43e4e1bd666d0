import RampartCore
import RampartStore

/// What refuses a start (fail closed): `Daemon.preflight` checks it before `rampartd` serves,
/// and every first sync checks it again.
enum StartChecks {
    /// A host the store does not know is a mistyped `--host`, never an empty policy.
    static func checkHostKnown(_ host: String, store: Store) throws {
        if try !store.knowsHost(host) {
            throw Daemon.Refusal(description: "the store does not know host \(jsonString(host)) (no instance was ever registered for it): "
                + "check --host; `rampart instance add … --host \(host)` or `rampart import` of its document registers it")
        }
    }

    /// Whether converging to `doc` could remove every instance of the host (and that is not allowed).
    static func wouldEmpty(_ doc: Document, _ configuration: Daemon.Configuration) -> Bool {
        !configuration.allowEmpty && !doc.instances.values.contains { $0.host == configuration.host }
    }

    static func refuseEmptying(_ host: String, kernelInstances n: Int) throws {
        if n > 0 {
            throw Daemon.Refusal(description: "refusing the first sync: the store has no instance on host \(host) but the kernel holds \(n); "
                + "it would remove every instance's rules (start with --allow-empty if that is meant)")
        }
    }
}
