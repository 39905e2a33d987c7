//! # graft-plugin-routing (work in progress)
