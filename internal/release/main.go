// Command release stamps a version into the repository: VERSION, the image
// tag the kustomize overlays pin, the Helm chart's version and appVersion,
// and CHANGELOG.md, whose Unreleased section becomes the version's section.
// Run it through make release VERSION=vX.Y.Z, which then renders the
// manifests and builds the binary with the version in it.
//
// Every edit is of a line the file must carry exactly once: a file that
// does not have it is reported and nothing is written.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

func main() {
	root := flag.String("root", ".", "repository root")
	version := flag.String("version", "", "the release, vMAJOR.MINOR.PATCH[-PRERELEASE]")
	date := flag.String("date", time.Now().UTC().Format("2006-01-02"), "release date for CHANGELOG.md")
	flag.Parse()
	if err := release(*root, *version, *date); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
	fmt.Printf("stamped %s into VERSION, CHANGELOG.md, the overlays and the chart\n", *version)
}

// semver is a semantic version with the v prefix of the tags; build
// metadata (+...) is refused, an image tag cannot carry it.
var semver = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)` +
	`(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?$`)

// Files the release stamps, relative to the repository root.
const (
	versionFile = "VERSION"
	changelog   = "CHANGELOG.md"
	chart       = "deploy/helm/ecs-localdisk-csi/Chart.yaml"
	overlays    = "deploy/kubernetes/overlays"
)

// release computes every edit first and writes only when all succeed.
func release(root, version, date string) error {
	if !semver.MatchString(version) {
		return fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH[-PRERELEASE]", version)
	}
	if _, err := time.Parse("2006-01-02", date); err != nil {
		return fmt.Errorf("date %q is not YYYY-MM-DD", date)
	}
	edits := map[string]func(string) (string, error){
		versionFile: func(string) (string, error) { return version + "\n", nil },
		changelog:   func(s string) (string, error) { return stampChangelog(s, version, date) },
		chart:       func(s string) (string, error) { return stampChart(s, version) },
	}
	kustomizations, err := filepath.Glob(filepath.Join(root, overlays, "*", "kustomization.yaml"))
	if err != nil || len(kustomizations) == 0 {
		return fmt.Errorf("no overlay under %s", filepath.Join(root, overlays))
	}
	for _, k := range kustomizations {
		rel, _ := filepath.Rel(root, k)
		edits[rel] = func(s string) (string, error) { return replaceLine(s, newTagLine, "${1} "+version) }
	}
	out := map[string]string{}
	for rel, edit := range edits {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil && !(rel == versionFile && os.IsNotExist(err)) {
			return err
		}
		s, err := edit(string(b))
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		out[rel] = s
	}
	// Every new text is written beside its file first; only then is each
	// renamed over its file.
	temps := map[string]string{}
	defer func() {
		for _, tmp := range temps {
			os.Remove(tmp)
		}
	}()
	for rel, s := range out {
		tmp := filepath.Join(root, rel+".release-tmp")
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			return err
		}
		temps[rel] = tmp
	}
	for rel, tmp := range temps {
		if err := os.Rename(tmp, filepath.Join(root, rel)); err != nil {
			return err
		}
		delete(temps, rel)
	}
	return nil
}

// The stamped lines: the value is the first word after the key, on the
// same line; what follows it (a comment) is kept.
var (
	newTagLine     = regexp.MustCompile(`(?m)^([ \t]+newTag:)[ \t]*[^\s#]*`)
	chartVersion   = regexp.MustCompile(`(?m)^(version:)[ \t]*[^\s#]*`)
	chartAppVer    = regexp.MustCompile(`(?m)^(appVersion:)[ \t]*[^\s#]*`)
	unreleased     = regexp.MustCompile(`(?m)^## \[Unreleased\][ \t]*$`)
	changelogEntry = regexp.MustCompile(`(?m)^## \[`)
)

// replaceLine replaces the one line re matches with repl (which may use the
// groups of re).
func replaceLine(s string, re *regexp.Regexp, repl string) (string, error) {
	if n := len(re.FindAllStringIndex(s, -1)); n != 1 {
		return "", fmt.Errorf("%d lines match %s; want exactly 1", n, re)
	}
	return re.ReplaceAllString(s, repl), nil
}

// stampChart sets the chart's version (SemVer without the v, as Helm
// wants it) and its appVersion (the image tag).
func stampChart(s, version string) (string, error) {
	s, err := replaceLine(s, chartVersion, "${1} "+strings.TrimPrefix(version, "v"))
	if err != nil {
		return "", err
	}
	return replaceLine(s, chartAppVer, `${1} "`+version+`"`)
}

// stampChangelog moves what is under Unreleased into a new section of the
// version, and leaves an empty Unreleased above it. It refuses an empty
// Unreleased section and a version already released.
func stampChangelog(s, version, date string) (string, error) {
	number := strings.TrimPrefix(version, "v")
	if strings.Contains(s, "## ["+number+"]") {
		return "", fmt.Errorf("version %s is already released", number)
	}
	loc := unreleased.FindAllStringIndex(s, -1)
	if len(loc) != 1 {
		return "", fmt.Errorf("%d '## [Unreleased]' headings; want exactly 1", len(loc))
	}
	head, body := s[:loc[0][1]], s[loc[0][1]:]
	end := len(body)
	if next := changelogEntry.FindStringIndex(body); next != nil {
		end = next[0]
	}
	if strings.TrimSpace(body[:end]) == "" {
		return "", fmt.Errorf("the Unreleased section is empty: nothing to release")
	}
	return head + "\n\n## [" + number + "] - " + date + body, nil
}
