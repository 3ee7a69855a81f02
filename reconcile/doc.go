// Package reconcile turns a configuration reload into a transaction: a
// pure planner works out, from the running and the desired configuration,
// the ordered steps that take the daemon from one to the other, each with
// its undo; a thin executor runs them over narrow interfaces the daemon
// implements and, when one fails, runs the undos of the applied steps in
// reverse order.
//
// # Planning
//
// MakePlan compares the configurations (conf.Diff, with the running
// values that changed outside the file put in first, see LiveValue) and
// returns the changes (the text `cachelun reload --dry-run` prints) and the
// steps. It does no I/O: the same inputs give the same plan, which is what
// the golden scripts in testdata pin (go test ./reconcile -update rewrites
// them). A plan with a change that needs a restart is refused whole, with
// every reason (ErrNotLive).
//
// Steps run in an order in which no host sees an inconsistent state (the
// list is on MakePlan): caches and volumes exist before a LUN maps them;
// LUNs are unmapped, and sessions that lose access logged out, before
// their volumes are drained and removed; a portal listens before a target
// names it and stops after none does; the TCMU exported set loses volumes
// before the iSCSI LUNs change and gains them after. TestPlanOrderingRules
// checks these rules on every script's plan and on its rollback.
//
// # Executing
//
// Apply runs the steps through Effects (Engine, Targets, TCMU, Daemon),
// each action described as data (Action). On a failure it undoes the
// applied steps in reverse order, best effort: a failed undo is logged and
// reported, and the rest still run. Rollback is not atomic: a step that
// failed halfway is the implementation's to leave unchanged (the daemon's
// SetWriteCache puts back the LUNs it changed).
//
// # Concurrency
//
// The package holds no state and no locks. Apply calls Effects from the
// calling goroutine only, one action at a time; the caller serializes
// reloads (the daemon holds its reloadMu across MakePlan and Apply, so the
// running configuration a plan starts from is still the running one when
// it applies).
package reconcile
