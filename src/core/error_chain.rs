//! One line for an error and its causes, for messages a person reads.
//!
//! Client libraries word their top-level errors for their own callers ("error sending
//! request", "error trying to connect") and keep what a user needs — connection
//! refused, permission denied, no such file — in the source chain. This joins the chain
//! into one line, leaving out a cause whose text is already there. Knows nothing of
//! which library the error came from; how the line is shown is the front end's business.

/// `err` and each of its sources, joined with `": "`, without repeating a cause that an
/// earlier part already says.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let err = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "connect: permission denied",
                Some(Box::new(Layer("permission denied", None))),
            ))),
        );
        assert_eq!(
            error_chain(&err),
            "error sending request: connect: permission denied"
        );
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }
}
