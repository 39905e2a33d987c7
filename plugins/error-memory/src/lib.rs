//! # graft-plugin-error-memory (work in progress)
