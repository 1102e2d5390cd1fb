"""Hardware profiles: one TOML file per class of hardware, the loader, and the host detector.

- `hardware_profiles.profile`: the `HardwareProfile` Structs (schema and invariants).
- `hardware_profiles.loader`: `load_profile_file`, `load_profile`, `all_profiles`, `fallback_chain`.
- `hardware_profiles.detect`: `gather_host_facts`, `detect`, `explain`.
- `hardware_profiles.report`: `render_table` for the CLI.
- `hardware_profiles.errors`: the `ProfileError` subtree.
"""
