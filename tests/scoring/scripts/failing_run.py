def init():
    pass


def run(raw_data):
    raise ValueError("the sensor value is out of range")
