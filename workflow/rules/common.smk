# Names and input functions shared by the rules.
RUN = config["name"]
SCANS = [scan["name"] for scan in config.get("scans", [])]
METHODS = config.get("strain", {}).get("methods", ["unet"])


wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",
    scan=r"[A-Za-z0-9_.-]+",
    method=r"unet|bragg|cepstrum|cepstrum-multi",


def strain_inputs(wildcards):
    """The scan, plus the trained model for the network method."""
    inputs = {"scan": f"results/scans/{wildcards.scan}.zarr"}
    if wildcards.method == "unet":
        inputs["model"] = f"results/train/{RUN}/model.pt"
    return inputs
