//! The backend seam: see [`Backend`].
