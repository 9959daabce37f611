//! The state graph of a workflow and the cursor of one run through it.
//!
//! States are interned to dense `u32` ids when a workflow is compiled. A [`Graph`] says,
//! per state, whether it is an exit and which kind of handler serves it; a [`Cursor`]
//! walks the graph for one run, recording the path and enforcing declared edges and the
//! optional transition limit.

/// Index of a state in its workflow's state table.
pub type StateId = u32;

/// What the graph refuses. State ids are rendered as labels by the bindings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("workflow has no registered state handlers")]
    NoHandlers,
    #[error("workflow has no exit states; orchestration could loop forever")]
    NoExitStates,
    #[error("initial state {0} is neither registered nor an exit state")]
    InitialNotRegistered(StateId),
    #[error("state {from} declares target {to}, which is neither registered nor an exit state")]
    UnknownDeclaredTarget { from: StateId, to: StateId },
    #[error("state {from} returned {to}, which is not among its declared targets")]
    UndeclaredTransition { from: StateId, to: StateId },
    #[error("state {0} is neither registered nor an exit state")]
    UnknownState(StateId),
    #[error("the run exceeded its limit of {limit} transitions")]
    TooManyTransitions { limit: u64 },
}

/// How the engine dispatches a state's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// A task whose `run` returns the next state; checkpointed.
    Single,
    /// A side-effect-free router; never checkpointed.
    Router,
    /// A resumable loop: each step is an attempt, each cursor is checkpointed.
    Stepped,
    /// A saga step: its output is pushed on the compensation stack.
    Compensatable,
    /// Concurrent branches joined by a strategy; moves to its join state.
    Split,
    /// A stream consumed in windows; its cursor is committed after each window.
    Stream,
}

impl HandlerKind {
    /// Whether entering a state of this kind writes a state-entry checkpoint row.
    pub fn checkpointed(self) -> bool {
        !matches!(self, HandlerKind::Router)
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    handler: Option<HandlerKind>,
    exit: bool,
    /// Declared targets (`to=`), sorted; `None` when undeclared.
    targets: Option<Vec<StateId>>,
}

/// The static shape of a workflow.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    max_transitions: Option<u64>,
}

/// What entering a state means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The run is over; the state is its result. Exit wins over a handler.
    Exit,
    /// Run the state's handler.
    Dispatch(HandlerKind),
}

impl Graph {
    /// A graph of `states` states, none registered yet.
    pub fn new(states: usize) -> Self {
        Graph { nodes: vec![Node::default(); states], max_transitions: None }
    }

    fn node_mut(&mut self, s: StateId) -> &mut Node {
        let i = s as usize;
        if i >= self.nodes.len() {
            self.nodes.resize(i + 1, Node::default());
        }
        &mut self.nodes[i]
    }

    /// Registers (or replaces) the handler of `state`, with its declared targets if any.
    pub fn set_handler(
        &mut self,
        state: StateId,
        kind: HandlerKind,
        targets: Option<Vec<StateId>>,
    ) {
        let node = self.node_mut(state);
        node.handler = Some(kind);
        node.targets = targets.map(|mut t| {
            t.sort_unstable();
            t.dedup();
            t
        });
    }

    /// Marks `state` as an exit state.
    pub fn set_exit(&mut self, state: StateId) {
        self.node_mut(state).exit = true;
    }

    /// Limits how many times a run may move from one state to the next.
    pub fn set_max_transitions(&mut self, limit: Option<u64>) {
        self.max_transitions = limit;
    }

    /// Number of states in the table.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the table has no states.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// True for an exit state.
    pub fn is_exit(&self, s: StateId) -> bool {
        self.nodes.get(s as usize).is_some_and(|n| n.exit)
    }

    /// The handler kind of `s`, if it has one.
    pub fn handler(&self, s: StateId) -> Option<HandlerKind> {
        self.nodes.get(s as usize).and_then(|n| n.handler)
    }

    /// True when `s` has a handler or is an exit state.
    pub fn is_known(&self, s: StateId) -> bool {
        self.nodes.get(s as usize).is_some_and(|n| n.exit || n.handler.is_some())
    }

    /// The graph rules checked by `validate()` and before every run.
    pub fn validate(&self) -> Result<(), GraphError> {
        if !self.nodes.iter().any(|n| n.handler.is_some()) {
            return Err(GraphError::NoHandlers);
        }
        if !self.nodes.iter().any(|n| n.exit) {
            return Err(GraphError::NoExitStates);
        }
        for (from, node) in self.nodes.iter().enumerate() {
            if node.handler.is_none() {
                continue;
            }
            for &to in node.targets.iter().flatten() {
                if !self.is_known(to) {
                    return Err(GraphError::UnknownDeclaredTarget { from: from as StateId, to });
                }
            }
        }
        Ok(())
    }

    /// The initial state must be registered or an exit state.
    pub fn check_initial(&self, s: StateId) -> Result<(), GraphError> {
        if self.is_known(s) {
            Ok(())
        } else {
            Err(GraphError::InitialNotRegistered(s))
        }
    }

    /// Checks a move `from → to` against the graph (not the transition limit).
    pub fn check_move(&self, from: StateId, to: StateId) -> Result<(), GraphError> {
        if !self.is_known(to) {
            return Err(GraphError::UnknownState(to));
        }
        if let Some(targets) = self.nodes.get(from as usize).and_then(|n| n.targets.as_ref()) {
            if targets.binary_search(&to).is_err() {
                return Err(GraphError::UndeclaredTransition { from, to });
            }
        }
        Ok(())
    }
}

/// How many of the most recent states a run's path keeps: a run that loops for ever keeps
/// bounded memory, and errors list (at most) its last this-many states.
pub const PATH_KEPT: usize = 10_000;

/// Where one run is: the current state, the path so far and the transition count.
#[derive(Debug, Clone)]
pub struct Cursor {
    state: StateId,
    transitions: u64,
    /// The path, of which only the last [`PATH_KEPT`] entries count; older ones are dropped in
    /// chunks (amortised: at most twice that many ids are held).
    path: Vec<StateId>,
    /// States entered and then dropped from `path`.
    dropped: u64,
}

impl Cursor {
    /// A run about to enter `initial`.
    pub fn new(initial: StateId) -> Self {
        Cursor { state: initial, transitions: 0, path: Vec::new(), dropped: 0 }
    }

    /// A resumed run: `path` was walked before the crash, `initial` is entered next.
    pub fn resumed(initial: StateId, mut path: Vec<StateId>) -> Self {
        let excess = path.len().saturating_sub(PATH_KEPT);
        path.drain(..excess);
        Cursor { state: initial, transitions: 0, path, dropped: excess as u64 }
    }

    /// The current state.
    pub fn state(&self) -> StateId {
        self.state
    }

    /// The states entered so far, in order: every one, or the last [`PATH_KEPT`] of them.
    pub fn path(&self) -> &[StateId] {
        &self.path[self.path.len().saturating_sub(PATH_KEPT)..]
    }

    /// How many states the run entered in all (the path may keep only the last ones).
    pub fn entered(&self) -> u64 {
        self.dropped + self.path.len() as u64
    }

    fn record(&mut self, s: StateId) {
        if self.path.len() >= 2 * PATH_KEPT {
            self.path.drain(..PATH_KEPT);
            self.dropped += PATH_KEPT as u64;
        }
        self.path.push(s);
    }

    /// Transitions made so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Enters the current state: records it on the path and says what to do.
    /// `None` means the state has no handler and is not an exit.
    pub fn enter(&mut self, graph: &Graph) -> Option<Entry> {
        self.record(self.state);
        if graph.is_exit(self.state) {
            return Some(Entry::Exit);
        }
        graph.handler(self.state).map(Entry::Dispatch)
    }

    /// Moves to `next`, enforcing declared edges and the transition limit. On error the
    /// cursor stays on the current state.
    pub fn advance(&mut self, graph: &Graph, next: StateId) -> Result<(), GraphError> {
        graph.check_move(self.state, next)?;
        if let Some(limit) = graph.max_transitions {
            if self.transitions >= limit {
                return Err(GraphError::TooManyTransitions { limit });
            }
        }
        self.transitions += 1;
        self.state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: StateId = 0;
    const B: StateId = 1;
    const C: StateId = 2;
    const D: StateId = 3;

    fn abc() -> Graph {
        let mut g = Graph::new(3);
        g.set_handler(A, HandlerKind::Single, None);
        g.set_handler(B, HandlerKind::Router, None);
        g.set_exit(C);
        g
    }

    #[test]
    fn validate_requires_handlers_and_exits() {
        assert_eq!(Graph::new(2).validate(), Err(GraphError::NoHandlers));
        let mut g = Graph::new(2);
        g.set_handler(A, HandlerKind::Single, None);
        assert_eq!(g.validate(), Err(GraphError::NoExitStates));
        g.set_exit(B);
        assert_eq!(g.validate(), Ok(()));
    }

    #[test]
    fn declared_targets_must_exist() {
        let mut g = abc();
        g.set_handler(A, HandlerKind::Single, Some(vec![D]));
        assert_eq!(g.validate(), Err(GraphError::UnknownDeclaredTarget { from: A, to: D }));
    }

    #[test]
    fn initial_state_must_be_known() {
        let g = abc();
        assert!(g.check_initial(A).is_ok());
        assert!(g.check_initial(C).is_ok());
        assert_eq!(g.check_initial(D), Err(GraphError::InitialNotRegistered(D)));
    }

    #[test]
    fn cursor_walks_and_records_the_path() {
        let g = abc();
        let mut c = Cursor::new(A);
        assert_eq!(c.enter(&g), Some(Entry::Dispatch(HandlerKind::Single)));
        c.advance(&g, B).unwrap();
        assert_eq!(c.enter(&g), Some(Entry::Dispatch(HandlerKind::Router)));
        c.advance(&g, C).unwrap();
        assert_eq!(c.enter(&g), Some(Entry::Exit));
        assert_eq!(c.path(), &[A, B, C]);
        assert_eq!(c.transitions(), 2);
    }

    #[test]
    fn exit_wins_over_a_handler() {
        let mut g = abc();
        g.set_exit(A);
        assert_eq!(Cursor::new(A).enter(&g), Some(Entry::Exit));
    }

    #[test]
    fn undeclared_move_is_refused_and_cursor_stays() {
        let mut g = abc();
        g.set_handler(A, HandlerKind::Single, Some(vec![C]));
        let mut c = Cursor::new(A);
        c.enter(&g);
        assert_eq!(c.advance(&g, B), Err(GraphError::UndeclaredTransition { from: A, to: B }));
        assert_eq!(c.state(), A);
        assert!(c.advance(&g, C).is_ok());
    }

    #[test]
    fn unknown_target_is_refused() {
        let mut g = abc();
        g.set_handler(D, HandlerKind::Single, None);
        let mut c = Cursor::new(A);
        c.enter(&g);
        assert!(c.advance(&g, D).is_ok());
        let g2 = abc();
        let mut c2 = Cursor::new(A);
        c2.enter(&g2);
        assert_eq!(c2.advance(&g2, D), Err(GraphError::UnknownState(D)));
    }

    #[test]
    fn transition_limit_counts_moves_not_states() {
        let mut g = Graph::new(2);
        g.set_handler(A, HandlerKind::Single, None);
        g.set_exit(B);
        g.set_max_transitions(Some(2));
        let mut c = Cursor::new(A);
        c.enter(&g);
        c.advance(&g, A).unwrap();
        c.enter(&g);
        c.advance(&g, A).unwrap();
        c.enter(&g);
        assert_eq!(c.advance(&g, B), Err(GraphError::TooManyTransitions { limit: 2 }));
        assert_eq!(c.path(), &[A, A, A]);
    }

    #[test]
    fn routers_are_not_checkpointed() {
        assert!(!HandlerKind::Router.checkpointed());
        assert!(HandlerKind::Single.checkpointed());
        assert!(HandlerKind::Stepped.checkpointed());
        assert!(HandlerKind::Compensatable.checkpointed());
    }

    #[test]
    fn a_long_path_keeps_only_its_last_states_and_bounded_memory() {
        let mut g = Graph::new(2);
        g.set_handler(A, HandlerKind::Single, None);
        g.set_exit(B);
        let mut c = Cursor::new(A);
        for _ in 0..(5 * PATH_KEPT + 3) {
            c.enter(&g);
            c.advance(&g, A).unwrap();
        }
        c.advance(&g, B).unwrap_or(());
        c.enter(&g);
        assert_eq!(c.path().len(), PATH_KEPT);
        assert_eq!(c.path().last(), Some(&c.state()));
        assert_eq!(c.entered(), 5 * PATH_KEPT as u64 + 4);
        assert!(c.path.capacity() <= 4 * PATH_KEPT, "{}", c.path.capacity());
        let resumed = Cursor::resumed(A, vec![A; 3 * PATH_KEPT]);
        assert_eq!(resumed.path().len(), PATH_KEPT);
    }

    #[test]
    fn resumed_cursor_keeps_the_prior_path() {
        let g = abc();
        let mut c = Cursor::resumed(B, vec![A]);
        c.enter(&g);
        assert_eq!(c.path(), &[A, B]);
    }
}
