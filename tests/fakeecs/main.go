// Command fakeecs serves the driver's fake ECS (pkg/cloud.Fake), a metadata
// server and an OpenAPI endpoint on loopback, until it is stopped: for one
// instance described by a JSON file, or (without --spec) for a cluster of
// instances that its control endpoint adds. The end-to-end suite runs one
// per cluster: each node whose disks the driver finds through the ECS
// source adds its instance, and the tests release instances through it.
//
//	fakeecs [--spec instance.json] --urls urls.json
//
// The control endpoint (loopback, the "control" URL in urls.json):
//
//	POST /instances         a Spec as JSON: adds the instance, its type and
//	                        disks; answers {"metadata": URL}
//	POST /release?instance=ID   releases the instance and its disks
//	POST /events            a cloud.FakeEvent as JSON: injects it
//	GET  /accepted          the IDs of the events accepted, as JSON
//	POST /finish?event=ID   ends the event (Executed)
//	POST /replace-disk      {"Old": ID, "New": a cloud.FakeDisk}: the disk
//	                        is replaced by another, as ECS's repair does
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"syscall"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// Spec is the instance the fake reports.
type Spec struct {
	Instance cloud.Instance
	Type     cloud.InstanceType
	Disks    []cloud.FakeDisk
}

func main() {
	specPath := flag.String("spec", "", "JSON file with the instance, its type and its disks (default: a cluster; instances come through the control endpoint)")
	urlsPath := flag.String("urls", "", "file to write {\"metadata\":..., \"api\":..., \"control\":...} to once serving")
	flag.Parse()
	if err := run(*specPath, *urlsPath); err != nil {
		fmt.Fprintln(os.Stderr, "fakeecs:", err)
		os.Exit(1)
	}
}

func run(specPath, urlsPath string) error {
	if urlsPath == "" {
		return fmt.Errorf("--urls is required")
	}
	spec := Spec{Instance: cloud.Instance{ID: "i-fakeecs", Type: "ecs.e2e", Region: "cn-hangzhou", Zone: "cn-hangzhou-k"}}
	if specPath != "" {
		b, err := os.ReadFile(specPath)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &spec); err != nil {
			return fmt.Errorf("%s: %w", specPath, err)
		}
	}
	f := cloud.NewFake(spec.Instance)
	defer f.Close()
	f.Update(func(f *cloud.Fake) {
		f.TokenMode = true
		f.Types[spec.Instance.Type] = spec.Type
		f.Disks = spec.Disks
	})
	control := httptest.NewServer(controlHandler(f))
	defer control.Close()
	urls, _ := json.Marshal(map[string]string{"metadata": f.Metadata.URL, "api": f.API.URL, "control": control.URL})
	if err := os.WriteFile(urlsPath+".tmp", urls, 0o600); err != nil {
		return err
	}
	if err := os.Rename(urlsPath+".tmp", urlsPath); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// controlHandler serves the control endpoint.
func controlHandler(f *cloud.Fake) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /instances", func(w http.ResponseWriter, r *http.Request) {
		var s Spec
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&s); err != nil || s.Instance.ID == "" {
			http.Error(w, fmt.Sprintf("a Spec with an instance ID: %v", err), http.StatusBadRequest)
			return
		}
		url := f.AddInstance(s.Instance)
		f.Update(func(f *cloud.Fake) {
			f.Types[s.Instance.Type] = s.Type
			f.Disks = append(f.Disks, s.Disks...)
		})
		json.NewEncoder(w).Encode(map[string]string{"metadata": url})
	})
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		var e cloud.FakeEvent
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&e); err != nil || e.ID == "" {
			http.Error(w, fmt.Sprintf("an event with an ID: %v", err), http.StatusBadRequest)
			return
		}
		f.InjectEvent(e)
	})
	mux.HandleFunc("GET /accepted", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(f.AcceptedEvents())
	})
	mux.HandleFunc("POST /finish", func(w http.ResponseWriter, r *http.Request) {
		f.FinishEvent(r.URL.Query().Get("event"))
	})
	mux.HandleFunc("POST /replace-disk", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Old string
			New cloud.FakeDisk
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || req.Old == "" || req.New.ID == "" {
			http.Error(w, fmt.Sprintf("Old and New: %v", err), http.StatusBadRequest)
			return
		}
		if !f.ReplaceDisk(req.Old, req.New) {
			http.Error(w, "no disk "+req.Old, http.StatusNotFound)
		}
	})
	mux.HandleFunc("POST /release", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("instance")
		if id == "" {
			http.Error(w, "instance= is required", http.StatusBadRequest)
			return
		}
		f.Release(id)
	})
	return mux
}
