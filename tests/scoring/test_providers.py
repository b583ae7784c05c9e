from modules.scoring import choose_providers

CPU = "CPUExecutionProvider"


def test_preference_is_intersected_with_what_is_installed_in_order():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]

    chosen, message = choose_providers(["cuda", "tensorrt", "cpu"], available)

    assert chosen == ["CUDAExecutionProvider", "TensorrtExecutionProvider", CPU]
    assert message is None


def test_missing_accelerators_fall_back_to_cpu_with_one_message():
    chosen, message = choose_providers(["cuda", "openvino"], ["AzureExecutionProvider", CPU])

    assert chosen == [CPU]
    assert message is not None
    assert "cuda, openvino not available here" in message
    assert message.endswith("falling back to CPU")


def test_cpu_only_preference_needs_no_message():
    assert choose_providers(["cpu"], [CPU]) == ([CPU], None)
