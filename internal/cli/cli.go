// Package cli is what the two commands, the node driver (ecs-localdisk-csi)
// and the cluster component (ecs-localdisk-csi-controller), share on their
// command line: one flag set with klog's flags, the help text and the
// version line.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"k8s.io/klog/v2"
)

// NewFlagSet is a command's own flags (added by addFlags) and klog's, in
// one set. -h and --help (not defined, so flag answers ErrHelp) are for
// the caller to answer with PrintUsage.
func NewFlagSet(name string, addFlags func(*flag.FlagSet)) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	addFlags(fs)
	logging := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(logging)
	logging.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, "klog: "+f.Usage) })
	fs.Usage = func() {} // the caller prints the help, or a pointer to it
	return fs
}

// PrintUsage prints the header, the command's own flags, then klog's.
func PrintUsage(fs *flag.FlagSet, out io.Writer, header string) {
	fmt.Fprint(out, header)
	var logging []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, "klog: ") {
			logging = append(logging, f)
			return
		}
		printFlag(out, f, f.Usage)
	})
	fmt.Fprint(out, "\nLogging flags (klog):\n")
	for _, f := range logging {
		printFlag(out, f, strings.TrimPrefix(f.Usage, "klog: "))
	}
}

// printFlag prints one flag as "  --name type" and its usage, with the
// default when it is not the zero value.
func printFlag(out io.Writer, f *flag.Flag, usage string) {
	kind, usage := flag.UnquoteUsage(&flag.Flag{Name: f.Name, Usage: usage, Value: f.Value})
	line := "  --" + f.Name
	if kind != "" {
		line += " " + kind
	}
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
		usage += fmt.Sprintf(" (default %q)", f.DefValue)
	}
	fmt.Fprintf(out, "%s\n      %s\n", line, usage)
}

// VersionLine is what --version prints: the command, its version, the
// commit (stamped, else the go command's VCS stamp) and the Go release.
func VersionLine(command, version, commit string) string {
	if commit == "" {
		commit = vcsCommit()
	}
	return fmt.Sprintf("%s %s (commit %s, %s)", command, version, commit, runtime.Version())
}

// vcsCommit is the commit the go command stamped into the binary, "unknown"
// outside a git checkout (the image's build stage has no .git).
func vcsCommit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", ""
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 12:
			rev = s.Value[:12]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	return rev + dirty
}

// Parse parses args into fs and answers what needs no work: --help prints
// the usage under header (exit code 0); a bad flag or a stray argument
// prints what is wrong (exit code 2). done says the command is to exit
// with code now.
func Parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, header string) (code int, done bool) {
	fs.SetOutput(stderr)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		PrintUsage(fs, stdout, header)
		return 0, true
	case err != nil: // flag printed the error
		fmt.Fprintf(stderr, "Run %s --help for the flags.\n", fs.Name())
		return 2, true
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return 2, true
	}
	return 0, false
}
