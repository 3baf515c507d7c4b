// Package crashpoint marks the places where a crash would leave the node's
// state or disks half-changed (between writing and renaming the state file,
// while a disk is formatted or wiped). In a normal build Hit does nothing. A
// build with the tag "crashpoints" (the fault-injection harness of
// tests/fault) lets a test kill the driver at one of them: the process
// reads the file named by $ECS_LOCALDISK_CRASHPOINT_FILE at every Hit and,
// when it names this point, kills its own process group with SIGKILL, as a
// node losing power or a container being killed would.
package crashpoint

// Points the driver marks, in the order a state write passes them.
const (
	// StateTempWritten: the new state is in a temporary file, not synced.
	StateTempWritten = "state-temp-written"
	// StateTempSynced: the temporary file is synced, not yet renamed.
	StateTempSynced = "state-temp-synced"
	// StateRenamed: the new state file is in place, its directory not synced.
	StateRenamed = "state-renamed"
)
