//! `byoc-agent policy check` and `byoc-agent policy show`: the policy as the
//! agent would apply it, without connecting anywhere.

use std::path::Path;

use byoc_gate::opfile;
use byoc_gate::policy::{Decision, Loaded, Request};

/// Exit codes of `policy check`.
pub const EXIT_ALLOW: u8 = 0;
pub const EXIT_DENY: u8 = 1;
pub const EXIT_APPROVAL: u8 = 3;

/// Decides every operation of `operation` under `policy` (None: the default
/// policy) and prints each decision with the rule that made it. Returns the
/// exit code: any denial gives 1, else any approval 3, else 0.
pub fn check(policy: Option<&Path>, operation: &Path) -> anyhow::Result<u8> {
    let loaded = Loaded::load(policy)?;
    let ops = opfile::load(operation)?;
    println!(
        "policy: {} (sha256 {})",
        loaded
            .path
            .as_ref()
            .map_or("none configured: the default policy".to_string(), |p| p
                .display()
                .to_string()),
        loaded.sha256
    );
    let mut code = EXIT_ALLOW;
    for (i, op) in ops.iter().enumerate() {
        let d = loaded.policy.evaluate(&Request {
            action: op.action,
            region: op.region.as_deref(),
            spec: &op.spec,
        });
        println!();
        println!(
            "operation {}: {} {} {}{}",
            i + 1,
            op.action.as_str(),
            op.spec.kind(),
            op.spec.name(),
            op.region.as_ref().map_or(String::new(), |r| format!(" in {r}"))
        );
        let (verdict, message, field) = match &d {
            Decision::Allow { .. } => ("ALLOW", None, None),
            Decision::Deny { message, field, .. } => {
                code = EXIT_DENY;
                ("DENY", Some(message), Some(field).filter(|f| !f.is_empty()))
            }
            Decision::NeedsApproval { message, .. } => {
                if code == EXIT_ALLOW {
                    code = EXIT_APPROVAL;
                }
                ("APPROVAL REQUIRED", Some(message), None)
            }
        };
        println!("  decision: {verdict}");
        println!("  rule:     {}", d.rule());
        if let Some(m) = message {
            println!("  message:  {m}");
        }
        if let Some(f) = field {
            println!("  field:    {f}");
        }
        if op.region.is_none() {
            println!("  note:     the file names no target, so the `regions` rule was not applied");
        }
    }
    Ok(code)
}

/// Prints the effective policy, defaults included.
pub fn show(policy: Option<&Path>) -> anyhow::Result<()> {
    let loaded = Loaded::load(policy)?;
    match &loaded.path {
        Some(p) => println!("# policy {} (sha256 {})", p.display(), loaded.sha256),
        None => println!(
            "# no policy file configured: the default policy (sha256 {})",
            loaded.sha256
        ),
    }
    print!("{}", loaded.policy.describe());
    Ok(())
}
