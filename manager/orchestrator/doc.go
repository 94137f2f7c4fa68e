// Package orchestrator holds what the leader-only loops that create, stop and
// delete tasks share. Its subpackages are the loops:
//
//   - replicated: slots 1..N of replicated services (scale, spec updates,
//     tasks on lost nodes, removed services);
//   - global: one task per eligible node for global services;
//   - restart: replaces tasks that ended while they should run, per their
//     restart policy;
//   - taskreaper: deletes old and removed tasks.
//
// # The task protocol (docs/tasks.md)
//
// A task is current while its DesiredState is at most RUNNING (IsCurrent).
// The current task of a replicated slot is the newest current task with that
// (service, slot); of a global service on a node, the newest current task with
// that (service, node) (Newest). Every other task is history. An orchestrator
// stops a task by raising its DesiredState (SHUTDOWN: stop it, keep it as
// history; REMOVE: stop it and delete it), never by writing its Status.
//
// A task that ended on its own (Status.State past RUNNING) stays current
// until the restart supervisor replaces it: so a slot whose task may not be
// restarted (condition none, attempts exhausted) stays occupied by its dead
// task, and the orchestrators do not refill it; a later spec update replaces
// it like any out-of-date task.
//
// # Shape of a loop
//
// Each loop is a Reactor driven by Run: Reconcile repairs the whole store
// when the loop starts (a new leader must repair whatever happened before)
// and whenever the watch is lost; Handle reacts to the changes that arrived
// since, all at once so that it can coalesce them. A loop reads in a View,
// turns what it read into a plan (a list of Writes, each an atomic step such
// as "stop this task and create its replacement"), and commits the plan in
// store batches: as many writes per proposal as the size limit allows. A
// write checks that what it changes is still what the plan read; if the store
// moved under the plan, the loop reads again and plans again (Converge).
package orchestrator
