//! # graft-plugin-ssf-pool (work in progress)
