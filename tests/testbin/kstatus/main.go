// Command kstatus reads one Kubernetes object as JSON on stdin and prints, tab-separated, the
// status and message that sigs.k8s.io/cli-utils' kstatus computes for it (the rules Flux's
// health checks follow).
//
// With -lua FILE it runs FILE as an Argo CD resource health check instead (Lua, with the object
// as the global `obj`, returning a table with `status` and `message`) and prints those.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

func main() {
	script := flag.String("lua", "", "an Argo CD health check script to run instead of kstatus")
	flag.Parse()
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	if *script != "" {
		runLua(*script, data)
		return
	}
	object := &unstructured.Unstructured{}
	// Kubernetes' own JSON reading keeps integers integers, as kstatus expects.
	if err := object.UnmarshalJSON(data); err != nil {
		fail(err)
	}
	result, err := status.Compute(object)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s\t%s\n", result.Status, result.Message)
}

// runLua evaluates a health script the way Argo CD does: the object as a Lua table in `obj`,
// the script's return value read as {status, message}.
func runLua(path string, data []byte) {
	var object interface{}
	if err := json.Unmarshal(data, &object); err != nil {
		fail(err)
	}
	state := lua.NewState()
	defer state.Close()
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoFile(path); err != nil {
		fail(err)
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		fail(fmt.Errorf("%s returned no table", path))
	}
	fmt.Printf("%s\t%s\n", lua.LVAsString(result.RawGetString("status")), lua.LVAsString(result.RawGetString("message")))
}

func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []interface{}:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}
