# Names and input functions shared by the rules.
import re
import shlex

RUN = config["name"]
SCANS = [scan["name"] for scan in config.get("scans", [])]
METHODS = config.get("strain", {}).get("methods", ["unet"])
# The shipped pretrained model (`stemstrain strain --method unet` without --model), beside the trained one.
SHIPPED = "unet-shipped"  # stemstrain.evaluate.report.SHIPPED (tests/test_report.py keeps them alike)
REPORTED = METHODS + ([SHIPPED] if config.get("strain", {}).get("shipped_model", False) else [])


wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",
    scan=r"[A-Za-z0-9_.-]+",
    # the methods of the config, which the schema checks against stemstrain.detect.METHODS, and SHIPPED
    method="|".join(re.escape(method) for method in REPORTED),


def strain_inputs(wildcards):
    """The scan and the resolved config, plus the trained model for the network method (not for SHIPPED)."""
    inputs = {"scan": f"results/scans/{wildcards.scan}.zarr", "config": f"results/config/{RUN}.yaml"}
    if wildcards.method == "unet":
        inputs["model"] = f"results/train/{RUN}/model.pt"
    return inputs


# Measured detector files of config `ingest.files` (rule ingest).
INGEST = {entry["name"]: entry for entry in config.get("ingest", {}).get("files", [])}
INGEST_OUTPUTS = [f"results/ingest/{name}.zarr" for name in INGEST]
INGEST_FLAGS = {
    "format": "--format",
    "energy_eV": "--energy-ev",
    "semiangle_mrad": "--semiangle-mrad",
    "k_sampling": "--k-sampling",
    "scan_step_nm": "--scan-step",
    "scan_shape": "--scan-shape",
    "chunks": "--chunks",
    "centre": "--centre",
    "probe": "--probe",
}


def ingest_options(wildcards):
    """The `stemstrain ingest` options of one config entry (unset ones left to the file's metadata)."""
    entry = INGEST[wildcards.name]
    options = []
    for key, flag in INGEST_FLAGS.items():
        value = entry.get(key)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        options += [flag, *(str(v) for v in values)]
    return shlex.join(options)
