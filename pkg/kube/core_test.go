package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// TestCoreClientPaths: the core/v1 client reads (asking for protobuf first)
// and writes events (create, update, strategic merge patch) where the API
// server serves those objects, decodes what it answers, and turns a 404
// into NotFound.
func TestCoreClientPaths(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.Method == http.MethodGet && !strings.HasPrefix(r.Header.Get("Accept"), "application/vnd.kubernetes.protobuf") {
			t.Errorf("GET %s accepts %q; want protobuf first, as client-go's typed clients", r.URL.Path, r.Header.Get("Accept"))
		}
		w.Header().Set("Content-Type", "application/json")
		var out any
		switch r.Method + " " + r.URL.Path {
		case "GET /api/v1/nodes/n1": // in protobuf, as the API server answers
			n := &corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "node-uid"}}
			w.Header().Set("Content-Type", runtime.ContentTypeProtobuf)
			if err := protobuf.NewSerializer(Scheme, Scheme).Encode(n, w); err != nil {
				t.Error(err)
			}
			return
		case "GET /api/v1/persistentvolumes/pv1":
			out = corev1.PersistentVolume{TypeMeta: metav1.TypeMeta{Kind: "PersistentVolume", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "pv1", UID: "pv-uid"}}
		case "POST /api/v1/namespaces/default/events":
			var e corev1.Event
			if err := json.Unmarshal(body, &e); err != nil || e.Reason != "DiskCleanupFailed" || e.InvolvedObject.UID != "node-uid" {
				t.Errorf("event posted: %v %s", err, body)
			}
			e.Name = "created"
			out = e
		case "PUT /api/v1/namespaces/default/events/n1.1":
			var e corev1.Event
			if err := json.Unmarshal(body, &e); err != nil || e.Count != 2 {
				t.Errorf("event updated: %v %s", err, body)
			}
			out = e
		case "PATCH /api/v1/namespaces/default/events/n1.1":
			if ct := r.Header.Get("Content-Type"); ct != string(types.StrategicMergePatchType) || string(body) != `{"count":3}` {
				t.Errorf("event patched as %q with %s", ct, body)
			}
			out = corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1", Namespace: "default"}, Count: 3}
		default:
			w.WriteHeader(http.StatusNotFound)
			out = metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound}
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer srv.Close()
	c, err := NewCoreClient(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if n, err := c.Node(ctx, "n1"); err != nil || n.UID != "node-uid" {
		t.Errorf("Node(n1) = %v, %v", n, err)
	}
	if pv, err := c.PersistentVolume(ctx, "pv1"); err != nil || pv.UID != "pv-uid" {
		t.Errorf("PersistentVolume(pv1) = %v, %v", pv, err)
	}
	if pvc, err := c.PersistentVolumeClaim(ctx, "ns", "c"); !apierrors.IsNotFound(err) || pvc != nil {
		t.Errorf("PersistentVolumeClaim(ns, c) of none = %v, %v; want nil and NotFound", pvc, err)
	}
	e := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1", Namespace: "default"}, Reason: "DiskCleanupFailed",
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "n1", UID: "node-uid"}}
	if got, err := c.EventSink().Create(e); err != nil || got.Name != "created" {
		t.Errorf("Create(event) = %v, %v", got, err)
	}
	e.Count = 2
	if got, err := c.EventSink().Update(e); err != nil || got.Count != 2 {
		t.Errorf("Update(event) = %v, %v", got, err)
	}
	if got, err := c.EventSink().Patch(e, []byte(`{"count":3}`)); err != nil || got.Count != 3 {
		t.Errorf("Patch(event) = %v, %v", got, err)
	}
	want := []string{"GET /api/v1/nodes/n1", "GET /api/v1/persistentvolumes/pv1",
		"GET /api/v1/namespaces/ns/persistentvolumeclaims/c", "POST /api/v1/namespaces/default/events",
		"PUT /api/v1/namespaces/default/events/n1.1", "PATCH /api/v1/namespaces/default/events/n1.1"}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != len(want) {
		t.Fatalf("requests %q; want %q", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("request %d: %s; want %s", i, seen[i], want[i])
		}
	}
}
