//! graft's integration tests: one binary, one module per capability. Tests that need the
//! pretrained weights pull them once into `target/graft-test-home` (real download, verified
//! sha256); tests that need the shared reference data fail loudly when it is missing.

mod cli;
