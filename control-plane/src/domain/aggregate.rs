//! The [`Aggregate`] trait: state folded from one stream's events.

use m87_events::DomainEvent;

/// State folded from the events of one stream. `apply` only changes state; the rules that decide
/// which events follow a command live in the aggregate's `decide_*` functions.
pub trait Aggregate: Default {
    /// Folds one event into the state. Unrelated events are ignored.
    fn apply(&mut self, event: &DomainEvent);

    /// Folds a whole stream, from the empty state.
    fn from_events<'a>(events: impl IntoIterator<Item = &'a DomainEvent>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(e);
        }
        state
    }
}
