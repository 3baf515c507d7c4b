package cloud

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// FakeEvent is a system event of the fake ECS.
type FakeEvent struct {
	ID, InstanceID, Type string
	// Status is the cycle status: Inquiring, Executing, Executed, ...
	Status         string
	DiskID, Device string
	CanAccept      bool
	Reason         string
}

// InjectEvent adds a system event, as ECS does when it finds a damaged
// local disk.
func (f *Fake) InjectEvent(e FakeEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Events = append(f.Events, e)
}

// Release makes an instance and its disks disappear, as releasing it does.
func (f *Fake) Release(instanceID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.Instances, instanceID)
	disks := f.Disks[:0]
	for _, d := range f.Disks {
		if d.InstanceID != instanceID {
			disks = append(disks, d)
		}
	}
	f.Disks = disks
}

// AcceptedEvents lists the events accepted so far, in order.
func (f *Fake) AcceptedEvents() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.Accepted...)
}

// repeated collects the values of a repeated query parameter (Name.1, Name.2, ...).
func repeated(p map[string]string, name string) map[string]bool {
	out := map[string]bool{}
	for k, v := range p {
		if n, ok := strings.CutPrefix(k, name+"."); ok {
			if _, err := strconv.Atoi(n); err == nil {
				out[v] = true
			}
		}
	}
	return out
}

// page cuts items at NextToken (an offset) and MaxResults (default 10).
func page[T any](items []T, p map[string]string) ([]T, string) {
	start, _ := strconv.Atoi(p["NextToken"])
	size, _ := strconv.Atoi(p["MaxResults"])
	if size <= 0 {
		size = 10
	}
	end := min(start+size, len(items))
	if start >= len(items) {
		return []T{}, ""
	}
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next
}

func (f *Fake) describeInstances(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	if err := json.Unmarshal([]byte(p["InstanceIds"]), &ids); err != nil || len(ids) > 100 {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"RequestId": "fake", "Code": "InvalidInstanceIds.Malformed", "Message": "InstanceIds: a JSON array of at most 100 IDs"})
		return
	}
	var match []map[string]any
	for _, id := range ids {
		if st, ok := f.Instances[id]; ok {
			match = append(match, map[string]any{"InstanceId": id, "Status": st, "RegionId": f.Instance.Region})
		}
	}
	items, next := page(match, p)
	json.NewEncoder(w).Encode(map[string]any{"RequestId": "fake", "TotalCount": len(match), "NextToken": next,
		"Instances": map[string]any{"Instance": items}})
}

func (f *Fake) describeInstanceHistoryEvents(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resources, statuses, types := repeated(p, "ResourceId"), repeated(p, "InstanceEventCycleStatus"), repeated(p, "InstanceEventType")
	var match []map[string]any
	for _, e := range f.Events {
		if isDiskEvent(e) {
			continue // DescribeDisksFullStatus serves these
		}
		// Without a status filter the API answers finished events only.
		finished := e.Status == "Executed" || e.Status == "Canceled" || e.Status == "Failed" || e.Status == "Avoided"
		if (len(resources) > 0 && !resources[e.InstanceID]) || (len(types) > 0 && !types[e.Type]) ||
			(len(statuses) > 0 && !statuses[e.Status]) || (len(statuses) == 0 && !finished) {
			continue
		}
		match = append(match, map[string]any{"EventId": e.ID, "InstanceId": e.InstanceID, "Reason": e.Reason,
			"EventType": map[string]any{"Name": e.Type}, "EventCycleStatus": map[string]any{"Name": e.Status},
			"ExtendedAttribute": map[string]any{"DiskId": e.DiskID, "Device": e.Device, "CanAccept": strconv.FormatBool(e.CanAccept)}})
	}
	items, next := page(match, p)
	json.NewEncoder(w).Encode(map[string]any{"RequestId": "fake", "TotalCount": len(match), "NextToken": next,
		"InstanceSystemEventSet": map[string]any{"InstanceSystemEventType": items}})
}

func (f *Fake) acceptInquiredSystemEvent(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, e := range f.Events {
		if e.ID != p["EventId"] {
			continue
		}
		if e.Status != "Inquiring" || !e.CanAccept {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"RequestId": "fake", "Code": "IncorrectEventStatus", "Message": "the event is " + e.Status})
			return
		}
		f.Events[i].Status = "Executing"
		f.Accepted = append(f.Accepted, e.ID)
		json.NewEncoder(w).Encode(map[string]string{"RequestId": "fake"})
		return
	}
	w.WriteHeader(http.StatusNotFound)
	json.NewEncoder(w).Encode(map[string]string{"RequestId": "fake", "Code": "InvalidEventId.NotFound", "Message": "no event " + p["EventId"]})
}

// isDiskEvent says whether the event is a disk's (Disk:ErrorDetected), which
// ECS lists through DescribeDisksFullStatus, not with the instance events.
func isDiskEvent(e FakeEvent) bool { return strings.HasPrefix(e.Type, "Disk:") }

func (f *Fake) describeDisksFullStatus(w http.ResponseWriter, p map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	disks := repeated(p, "DiskId")
	want := strings.TrimPrefix(p["EventType"], "Disk:")
	byDisk := map[string][]map[string]any{}
	instanceOf, deviceOf := map[string]string{}, map[string]string{}
	var order []string
	for _, e := range f.Events {
		name := strings.TrimPrefix(e.Type, "Disk:")
		if !isDiskEvent(e) || (len(disks) > 0 && !disks[e.DiskID]) || (want != "" && name != want) {
			continue
		}
		ev := map[string]any{"EventId": e.ID, "EventType": map[string]any{"Name": name}, "EventTime": "2026-12-01T00:00:00Z"}
		if e.Status == "Executed" {
			ev["EventEndTime"] = "2026-12-01T00:01:00Z"
		}
		if _, ok := byDisk[e.DiskID]; !ok {
			order = append(order, e.DiskID)
		}
		byDisk[e.DiskID] = append(byDisk[e.DiskID], ev)
		instanceOf[e.DiskID], deviceOf[e.DiskID] = e.InstanceID, e.Device
	}
	var all []map[string]any
	for _, d := range order {
		all = append(all, map[string]any{"DiskId": d, "InstanceId": instanceOf[d], "Device": deviceOf[d],
			"DiskEventSet": map[string]any{"DiskEventType": byDisk[d]}})
	}
	size, _ := strconv.Atoi(p["PageSize"])
	if size <= 0 {
		size = 10
	}
	pageNo, _ := strconv.Atoi(p["PageNumber"])
	if pageNo <= 0 {
		pageNo = 1
	}
	start, end := min((pageNo-1)*size, len(all)), min(pageNo*size, len(all))
	json.NewEncoder(w).Encode(map[string]any{"RequestId": "fake", "TotalCount": len(all), "PageNumber": pageNo, "PageSize": size,
		"DiskFullStatusSet": map[string]any{"DiskFullStatusType": all[start:end]}})
}

// FinishEvent ends an event (Executed), as ECS does once it has carried
// it out.
func (f *Fake) FinishEvent(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.Events {
		if f.Events[i].ID == id {
			f.Events[i].Status = "Executed"
		}
	}
}

// ReplaceDisk puts disk d in place of the disk with ID old, as ECS's repair
// of a damaged local disk does; it reports whether old was there.
func (f *Fake) ReplaceDisk(old string, d FakeDisk) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.Disks {
		if f.Disks[i].ID == old {
			f.Disks[i] = d
			return true
		}
	}
	return false
}
