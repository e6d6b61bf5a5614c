"""What the network predicts (eps, v or x0) and how to get the others from it.

With x_t = alpha * x0 + sigma * eps and alpha^2 + sigma^2 = 1, v is defined as
alpha * eps - sigma * x0 (Salimans & Ho 2022); given x_t, any one of the
three determines the other two.
"""

PREDICTIONS = ("eps", "v", "x0")


def check_prediction(prediction):
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def split_output(output, channels):
    """(prediction, variance values): a learned-variance model emits 2C channels, prediction first."""
    return output[..., :channels], output[..., channels:]


def to_x0_eps(pred, x_t, alpha, sigma, prediction):
    """Data and noise estimates implied by a prediction at noise level (alpha, sigma)."""
    check_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if prediction == "v":
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    return pred, (x_t - alpha * pred) / sigma


def training_target(x0, noise, alpha, sigma, prediction):
    """What the network is regressed onto."""
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "v":
        return alpha * noise - sigma * x0
    return x0
