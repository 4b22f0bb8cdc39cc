//! CEL expressions of object health gates (`healthGates.objects[].expression`): compiled with the
//! `cel` crate, checked for the variable the gate defines, and evaluated over objects read as
//! JSON. The webhook, `check` and the controller use these same functions.

use serde_json::Value;

/// The longest expression a gate may hold: compiling is bounded like every webhook input.
pub const MAX_EXPRESSION: usize = 4096;

/// The variable an expression reads: `object` for a gate naming one object, `objects` (a list)
/// for one selecting several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    Object,
    Objects,
}

impl Variable {
    pub fn name(self) -> &'static str {
        match self {
            Variable::Object => "object",
            Variable::Objects => "objects",
        }
    }
}

/// A compiled expression.
pub struct Compiled(cel::Program);

/// Compiles `source`, which must read `variable` and not the other one. Errors name the line
/// and column (`1:15: Syntax error: …`) and say what to write instead.
pub fn compile(source: &str, variable: Variable) -> Result<Compiled, String> {
    if source.trim().is_empty() {
        return Err(format!(
            "is empty; give a CEL expression over `{}` that is true while it is healthy",
            variable.name()
        ));
    }
    if source.len() > MAX_EXPRESSION {
        return Err(format!(
            "is {} bytes long, more than {MAX_EXPRESSION}",
            source.len()
        ));
    }
    let program = cel::Program::compile(source).map_err(|errors| {
        let first = errors.errors.first();
        match first {
            Some(e) => format!(
                "{source:?} is not CEL: {}:{}: {}",
                e.pos.0,
                e.pos.1,
                e.msg.trim_start_matches("Syntax error: ")
            ),
            None => format!("{source:?} is not CEL"),
        }
    })?;
    let references = program.references();
    let other = match variable {
        Variable::Object => Variable::Objects,
        Variable::Objects => Variable::Object,
    };
    if references.has_variable(other.name()) {
        let why = match variable {
            Variable::Object => {
                "the gate names one object (`name`), so the expression reads `object`"
            }
            Variable::Objects => {
                "the gate selects objects (`selector`, or neither `name` nor `selector`), so the \
                 expression reads the list `objects`, e.g. objects.all(o, …)"
            }
        };
        return Err(format!("{source:?} reads `{}`; {why}", other.name()));
    }
    if !references.has_variable(variable.name()) {
        return Err(format!(
            "{source:?} does not read `{}`, so it says nothing about the objects",
            variable.name()
        ));
    }
    Ok(Compiled(program))
}

/// Evaluates a compiled expression with `variable` bound to `value`: true opens the gate; false,
/// a value that is not a boolean, or an error (a missing field, a wrong type) keeps it closed,
/// with why.
pub fn evaluate(compiled: &Compiled, variable: Variable, value: &Value) -> Result<bool, String> {
    let mut context = cel::Context::default();
    let bound = cel::to_value(value).map_err(|e| format!("reading the objects: {e}"))?;
    context.add_variable_from_value(variable.name(), bound);
    match compiled.0.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("the expression gives {other:?}, not true or false")),
        Err(e) => Err(format!("the expression fails: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_compile_for_their_variable_with_positions_in_errors() {
        assert!(
            compile(
                "object.status.ceph.health == \"HEALTH_OK\"",
                Variable::Object
            )
            .is_ok()
        );
        assert!(
            compile(
                "objects.all(v, v.status.robustness == 'healthy')",
                Variable::Objects
            )
            .is_ok()
        );
        let bad = |source: &str, variable| compile(source, variable).err().unwrap();
        assert_eq!(
            bad("object.status.", Variable::Object),
            "\"object.status.\" is not CEL: 1:15: no viable alternative at input '.'"
        );
        assert!(bad("objects.all(o, o.ok)", Variable::Object).contains("reads `objects`"));
        assert!(bad("object.ok", Variable::Objects).contains("reads the list `objects`"));
        assert!(bad("1 == 1", Variable::Object).contains("does not read `object`"));
        assert!(bad(" ", Variable::Object).starts_with("is empty"));
        assert!(bad(&"x".repeat(5000), Variable::Object).contains("more than 4096"));
    }

    #[test]
    fn evaluation_opens_only_on_true() {
        let health = compile("object.status.ceph.health == 'HEALTH_OK'", Variable::Object)
            .ok()
            .unwrap();
        let ok = json!({"status": {"ceph": {"health": "HEALTH_OK"}}});
        let warn = json!({"status": {"ceph": {"health": "HEALTH_WARN"}}});
        assert_eq!(evaluate(&health, Variable::Object, &ok), Ok(true));
        assert_eq!(evaluate(&health, Variable::Object, &warn), Ok(false));
        let missing = evaluate(&health, Variable::Object, &json!({"status": {}}));
        assert!(missing.unwrap_err().contains("fails"));
        let all = compile(
            "objects.all(v, v.status.robustness == 'healthy')",
            Variable::Objects,
        )
        .ok()
        .unwrap();
        let volumes =
            json!([{"status": {"robustness": "healthy"}}, {"status": {"robustness": "degraded"}}]);
        assert_eq!(evaluate(&all, Variable::Objects, &volumes), Ok(false));
        assert_eq!(evaluate(&all, Variable::Objects, &json!([])), Ok(true));
        let not_bool = compile("object.status", Variable::Object).ok().unwrap();
        assert!(
            evaluate(&not_bool, Variable::Object, &ok)
                .unwrap_err()
                .contains("not true or false")
        );
    }
}
