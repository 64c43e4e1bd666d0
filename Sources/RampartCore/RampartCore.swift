/// RampartCore: the desired-state document, validation, model, compiler, differ and events.
