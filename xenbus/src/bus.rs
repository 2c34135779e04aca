//! xenbus (arriving).
