//! Degrade: a caller-supplied answer, marked as degraded, when the real call
//! fails or is refused.

/// An answer that is either the real one or a degraded stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// The downstream's own answer.
    Fresh(T),
    /// The fallback's answer, and why the real one was not available.
    Degraded {
        /// The stand-in value.
        value: T,
        /// The error that made the call fall back.
        reason: String,
    },
}

impl<T> Answer<T> {
    /// Whether this is the fallback's answer.
    pub fn is_degraded(&self) -> bool {
        matches!(self, Self::Degraded { .. })
    }

    /// The value, real or degraded.
    pub fn value(&self) -> &T {
        match self {
            Self::Fresh(v) | Self::Degraded { value: v, .. } => v,
        }
    }

    /// The value, real or degraded.
    pub fn into_value(self) -> T {
        match self {
            Self::Fresh(v) | Self::Degraded { value: v, .. } => v,
        }
    }
}

/// The call's value if it succeeded, else `fallback(&error)` marked degraded.
///
/// ```
/// use facepool::guard::{or_degrade, Answer};
/// let r: Result<u32, &str> = Err("downstream down");
/// let a = or_degrade(r, |_| 0);
/// assert_eq!(a, Answer::Degraded { value: 0, reason: "downstream down".into() });
/// ```
pub fn or_degrade<T, E: std::fmt::Display>(r: Result<T, E>, fallback: impl FnOnce(&E) -> T) -> Answer<T> {
    match r {
        Ok(v) => Answer::Fresh(v),
        Err(e) => Answer::Degraded {
            value: fallback(&e),
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_degraded() {
        let ok: Result<u32, String> = Ok(7);
        let a = or_degrade(ok, |_| 0);
        assert!(!a.is_degraded());
        assert_eq!(*a.value(), 7);
        let err: Result<u32, String> = Err("boom".into());
        let a = or_degrade(err, |e| e.len() as u32);
        assert!(a.is_degraded());
        assert_eq!(a.clone().into_value(), 4);
        assert_eq!(
            a,
            Answer::Degraded {
                value: 4,
                reason: "boom".into()
            }
        );
    }
}
